//! Whole-server questions and group changes: asked of every worker over the mesh, answered
//! once all have replied or `ipc_timeout` passed (then flagged `"partial": true`).
//!
//! A request is a small JSON object `{"q": kind, …}`. Each worker answers its own share
//! ([`Worker::answer_query`]); the entry worker merges the shares ([`merge`]) and renders the
//! result for the text port or the HTTP API ([`render_text`], [`render_http`]).

use super::*;
use crate::proto::{http, text};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Where a query's result goes.
#[derive(Debug, Clone)]
pub enum QReply {
    /// Reply slot `seq` of text connection `slot` (if still connection `id`).
    Text {
        /// Slot.
        slot: usize,
        /// Connection id.
        id: u64,
        /// Reply slot.
        seq: u64,
    },
    /// The request in flight on HTTP connection `slot`.
    Http {
        /// Slot.
        slot: usize,
        /// Connection id.
        id: u64,
    },
    /// A uid logged in here: adopt the groups its siblings know for it.
    LoginSync(String),
    /// The once-a-second count of uids and pages for Socket.IO's `update_online_count`.
    OnlineCount,
    /// `GET /metrics` on HTTP connection `slot`: the stats in Prometheus text format.
    Metrics {
        /// Slot.
        slot: usize,
        /// Connection id.
        id: u64,
    },
}

/// Prometheus text exposition of every worker's status row: counters end in `_total`,
/// gauges do not; each sample is labelled with its worker.
pub fn render_metrics(merged: &Value, partial: bool) -> String {
    const COUNTERS: &[(&str, &str)] = &[
        (
            "pushes",
            "Pushes received from backends and relaying clients",
        ),
        ("delivered", "Frames queued to client connections"),
        (
            "send_fail",
            "Frames dropped for a connection over max_send_buffer",
        ),
        (
            "ipc_undelivered",
            "Sibling answers missing (link full, broken or too slow)",
        ),
        ("accepted", "Connections accepted"),
        ("rejected", "Connections closed for a protocol violation"),
        (
            "over_max_connections",
            "Connections refused over max_connections",
        ),
        (
            "over_per_ip",
            "Connections refused over max_connections_per_ip",
        ),
        (
            "bad_origin",
            "WebSocket handshakes refused for their Origin",
        ),
        ("auth_failed", "Logins refused"),
        (
            "auth_timeout",
            "Connections closed for not logging in in time",
        ),
        ("idle_closed", "Connections closed after idle_timeout"),
        (
            "slow_closed",
            "Connections closed after slow_timeout over max_send_buffer",
        ),
        (
            "oversize",
            "Frames, lines, bodies or heads over their limit",
        ),
        (
            "unauthorized",
            "Backend requests without a valid push_secret",
        ),
    ];
    const GAUGES: &[(&str, &str)] = &[
        ("connections", "Open connections"),
        ("logged_in", "Logged-in WebSocket connections"),
        ("uids", "Distinct uids with a connection in the worker"),
        ("rss_kib", "Resident memory of the worker in KiB"),
        ("inflight", "Pushes waiting for sibling answers"),
    ];
    let workers = merged["workers"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, key: &str| {
        out.push_str(&format!(
            "# HELP herald_{name} {help}\n# TYPE herald_{name} {kind}\n"
        ));
        for w in &workers {
            if let (Some(id), Some(v)) = (w.get("worker"), w.get(key).and_then(Value::as_u64)) {
                out.push_str(&format!("herald_{name}{{worker=\"{id}\"}} {v}\n"));
            }
        }
    };
    for (k, help) in COUNTERS {
        family(&format!("{k}_total"), help, "counter", k);
    }
    for (k, help) in GAUGES {
        family(k, help, "gauge", k);
    }
    out.push_str(&format!(
        "# HELP herald_workers_answered Workers whose figures are included\n# TYPE herald_workers_answered gauge\nherald_workers_answered {}\n# HELP herald_partial 1 when a worker did not answer in time\n# TYPE herald_partial gauge\nherald_partial {}\n",
        workers.len(),
        partial as u8
    ));
    out
}

/// A query waiting for siblings.
pub struct PendingQuery {
    /// The request (also tells how to merge and render).
    pub req: Value,
    /// Shares so far (this worker's first).
    pub answers: Vec<Value>,
    /// Link keys that have not answered.
    pub waiting: Vec<usize>,
    /// Where the result goes.
    pub reply: QReply,
    /// When to stop waiting.
    pub deadline: Instant,
}

fn kind(req: &Value) -> &str {
    req.get("q").and_then(Value::as_str).unwrap_or("")
}

fn s<'a>(req: &'a Value, k: &str) -> &'a str {
    req.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Merges every worker's share into the whole server's answer.
pub fn merge(req: &Value, answers: &[Value]) -> Value {
    let sum = |k: &str| {
        answers
            .iter()
            .filter_map(|a| a.get(k)?.as_u64())
            .sum::<u64>()
    };
    let union = |k: &str| -> BTreeSet<String> {
        answers
            .iter()
            .filter_map(|a| a.get(k)?.as_array())
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    match kind(req) {
        "online" | "kick" => json!({ "connections": sum("connections") }),
        "uids" => json!({ "connections": sum("connections"), "uids": union("uids") }),
        "groups_of" => json!({ "groups": union("groups") }),
        "groups" => {
            let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for a in answers {
                if let Some(Value::Object(m)) = a.get("groups") {
                    for (g, uids) in m {
                        let e = all.entry(g.clone()).or_default();
                        for u in uids.as_array().into_iter().flatten() {
                            if let Some(u) = u.as_str() {
                                e.insert(u.to_string());
                            }
                        }
                    }
                }
            }
            json!({ "groups": all })
        }
        "stats" => json!({ "workers": answers }),
        _ => json!({}),
    }
}

/// The text port's reply line for a merged result.
pub fn render_text(req: &Value, merged: &Value, partial: bool) -> Vec<u8> {
    let mut line = match kind(req) {
        "online" => {
            if merged["connections"].as_u64().unwrap_or(0) > 0 {
                "1".to_string()
            } else {
                "0".to_string()
            }
        }
        "count" | "uids" if s(req, "as") == "count" => {
            let mut o = Map::new();
            o.insert("connections".into(), merged["connections"].clone());
            o.insert(
                "uids".into(),
                json!(merged["uids"].as_array().map_or(0, Vec::len)),
            );
            if partial {
                o.insert("partial".into(), json!(true));
            }
            Value::Object(o).to_string()
        }
        "uids" => {
            if partial {
                json!({ "uids": merged["uids"], "partial": true }).to_string()
            } else {
                merged["uids"].to_string()
            }
        }
        "groups" => {
            let mut o = Map::new();
            if let Some(m) = merged["groups"].as_object() {
                for (g, u) in m {
                    o.insert(g.clone(), json!(u.as_array().map_or(0, Vec::len)));
                }
            }
            if partial {
                json!({ "groups": o, "partial": true }).to_string()
            } else {
                Value::Object(o).to_string()
            }
        }
        "kick" => {
            if merged["connections"].as_u64().unwrap_or(0) > 0 {
                "ok".into()
            } else {
                "fail".into()
            }
        }
        _ => "ok".into(),
    };
    line.push('\n');
    line.into_bytes()
}

/// The HTTP API's (status, JSON body) for a merged result.
pub fn render_http(req: &Value, merged: &Value, partial: bool) -> (&'static str, Value) {
    let mut v = match kind(req) {
        "online" => {
            let n = merged["connections"].as_u64().unwrap_or(0);
            json!({ "online": n > 0, "connections": n })
        }
        "uids" => {
            json!({ "uids": merged["uids"], "count": merged["uids"].as_array().map_or(0, Vec::len), "connections": merged["connections"] })
        }
        "groups" => {
            let mut o = Map::new();
            if let Some(m) = merged["groups"].as_object() {
                for (g, u) in m {
                    o.insert(g.clone(), json!(u.as_array().map_or(0, Vec::len)));
                }
            }
            json!({ "groups": o })
        }
        "kick" => {
            let n = merged["connections"].as_u64().unwrap_or(0);
            json!({ "ok": n > 0, "connections": n })
        }
        "stats" => {
            let workers = merged["workers"].as_array().cloned().unwrap_or_default();
            let mut totals = Map::new();
            for k in [
                "connections",
                "logged_in",
                "pushes",
                "delivered",
                "send_fail",
                "ipc_undelivered",
                "rejected",
                "over_max_connections",
                "over_per_ip",
                "bad_origin",
                "auth_failed",
                "auth_timeout",
                "idle_closed",
                "slow_closed",
                "oversize",
                "unauthorized",
                "rss_kib",
            ] {
                let t: u64 = workers.iter().filter_map(|w| w.get(k)?.as_u64()).sum();
                totals.insert(k.into(), json!(t));
            }
            json!({ "totals": totals, "workers": workers })
        }
        _ => json!({ "ok": true }),
    };
    if partial {
        v["partial"] = json!(true);
    }
    ("200 OK", v)
}

impl Worker {
    /// This worker's share of `req` (mutations are applied here).
    pub(super) fn answer_query(&mut self, req: &Value) -> Value {
        let now = self.now;
        match kind(req) {
            "online" => json!({ "connections": self.registry.get(s(req, "uid")).len() }),
            "uids" => {
                let group = s(req, "group");
                let (mut conns, mut uids) = (0usize, Vec::new());
                if group.is_empty() {
                    for (u, slots) in self.registry.iter() {
                        conns += slots.len();
                        uids.push(u.to_string());
                    }
                } else {
                    for u in self.groups.members(group) {
                        let n = self.registry.get(u).len();
                        if n > 0 {
                            conns += n;
                            uids.push(u.clone());
                        }
                    }
                }
                json!({ "connections": conns, "uids": uids })
            }
            "groups" => {
                let m: Map<String, Value> = self
                    .groups
                    .all()
                    .map(|(g, u)| (g.clone(), json!(u.iter().collect::<Vec<_>>())))
                    .collect();
                json!({ "groups": m })
            }
            "groups_of" => json!({ "groups": self.groups.groups_of(s(req, "uid")) }),
            "join" => {
                let uid = s(req, "uid");
                let present = !self.registry.get(uid).is_empty();
                self.groups.join(uid, s(req, "group"), present, now);
                json!({})
            }
            "leave" => {
                self.groups.leave(s(req, "uid"), s(req, "group"));
                json!({})
            }
            "ungroup" => {
                self.groups.ungroup(s(req, "group"));
                json!({})
            }
            "kick" => {
                let slots: Vec<u32> = self.registry.get(s(req, "uid")).to_vec();
                let data = req
                    .get("data")
                    .filter(|d| !d.is_null())
                    .map(text::data_bytes);
                for &slot in &slots {
                    if slot & SESSION_BIT != 0 {
                        let idx = (slot & !SESSION_BIT) as usize;
                        if let Some(d) = data.as_deref().and_then(|d| std::str::from_utf8(d).ok()) {
                            let m = crate::proto::engineio::event_message(
                                "/",
                                "new_msg",
                                &[Value::from(d)],
                            );
                            self.sio_send(idx, std::rc::Rc::from(m.as_str()), None);
                            self.sio_flush();
                        }
                        self.sio_close(idx, "kicked");
                        continue;
                    }
                    if let Some(d) = &data {
                        self.queue(slot as usize, frame(OP_TEXT, d));
                    }
                    self.ws_close(slot as usize, 1000, "kicked");
                }
                json!({ "connections": slots.len() })
            }
            "stats" => self.status_row(),
            _ => json!({}),
        }
    }

    /// Answers `req` here and asks every sibling; the result goes to `reply` when complete.
    pub(super) fn query(&mut self, req: Value, reply: QReply) {
        let local = self.answer_query(&req);
        let id = self.next_query_id;
        self.next_query_id += 1;
        let body = req.to_string().into_bytes();
        let msg = PeerMsg::Query { id, body };
        let mut waiting = Vec::new();
        let mut partial = false;
        for (key, link) in self.links.iter_mut().filter(|(_, l)| l.outbound) {
            match link.chan.send(&msg) {
                Ok(()) => {
                    link.dirty = true;
                    waiting.push(key);
                }
                Err(e) => {
                    partial = true;
                    log::warn!("query {id} not sent to worker {}: {e}", link.peer_worker);
                }
            }
        }
        let q = PendingQuery {
            req,
            answers: vec![local],
            waiting,
            reply,
            deadline: Instant::now() + ms(self.cfg.ipc_timeout),
        };
        if q.waiting.is_empty() {
            self.finish_query(q, partial);
        } else {
            self.queries.insert(id, (q, partial));
        }
    }

    /// A sibling's query arrived on link `key`: answer it there.
    pub(super) fn sibling_query(&mut self, key: usize, id: u64, body: &[u8]) {
        let answer = match serde_json::from_slice::<Value>(body) {
            Ok(req) => self.answer_query(&req),
            Err(_) => json!({}),
        };
        if let Some(l) = self.links.get_mut(key) {
            l.dirty = true;
            if let Err(e) = l.chan.send(&PeerMsg::Answer {
                id,
                body: answer.to_string().into_bytes(),
            }) {
                log::warn!("cannot answer query {id} of worker {}: {e}", l.peer_worker);
            }
        }
    }

    /// A sibling's answer arrived on link `key`.
    pub(super) fn sibling_answer(&mut self, key: usize, id: u64, body: &[u8]) {
        let Some((q, _)) = self.queries.get_mut(&id) else {
            return;
        };
        q.waiting.retain(|&k| k != key);
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            q.answers.push(v);
        }
        if q.waiting.is_empty() {
            if let Some((q, partial)) = self.queries.remove(&id) {
                self.finish_query(q, partial);
            }
        }
    }

    /// Link `key` is gone: queries waiting on it complete without its share.
    pub(super) fn queries_link_lost(&mut self, key: usize) {
        let ids: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, (q, _))| q.waiting.contains(&key))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((mut q, _)) = self.queries.remove(&id) {
                q.waiting.retain(|&k| k != key);
                if q.waiting.is_empty() {
                    self.finish_query(q, true);
                } else {
                    self.queries.insert(id, (q, true));
                }
            }
        }
    }

    /// Completes queries past their deadline with what they have.
    pub(super) fn expire_queries(&mut self, now: Instant) {
        let ids: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, (q, _))| q.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some((q, _)) = self.queries.remove(&id) {
                self.stats.ipc_undelivered += q.waiting.len() as u64;
                self.finish_query(q, true);
            }
        }
    }

    /// Earliest query deadline.
    pub(super) fn next_query_deadline(&self) -> Option<Instant> {
        self.queries.values().map(|(q, _)| q.deadline).min()
    }

    fn finish_query(&mut self, q: PendingQuery, partial: bool) {
        let merged = merge(&q.req, &q.answers);
        match q.reply {
            QReply::Text { slot, id, seq } => {
                let line = render_text(&q.req, &merged, partial);
                self.text_reply(slot, id, seq, Bytes::from(line));
            }
            QReply::Http { slot, id } => {
                let (status, v) = render_http(&q.req, &merged, partial);
                self.http_json(slot, id, status, &v);
            }
            QReply::Metrics { slot, id } => {
                let Some(keep) = self.http_keep_alive(slot, id) else {
                    return;
                };
                let body = render_metrics(&merged, partial);
                let r = http::response(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    keep,
                    "",
                );
                self.http_respond(slot, r);
                self.http_resume(slot);
            }
            QReply::OnlineCount => self.sio_online(&merged),
            QReply::LoginSync(uid) => {
                if self.registry.get(&uid).is_empty() {
                    return;
                }
                let now = self.now;
                for g in merged["groups"].as_array().into_iter().flatten() {
                    if let Some(g) = g.as_str() {
                        self.groups.join(&uid, g, true, now);
                    }
                }
            }
        }
    }

    /// Writes a JSON response to HTTP connection `slot` (if still connection `id`) and goes on
    /// with its pipelined requests.
    pub(super) fn http_json(&mut self, slot: usize, id: u64, status: &str, v: &Value) {
        let Some(keep) = self.http_keep_alive(slot, id) else {
            return;
        };
        let (body, allow) = match v.get("allow").and_then(Value::as_str) {
            Some(a) => {
                // Said in the header, not in the documented body.
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("allow");
                }
                (v.to_string(), format!("Allow: {a}\r\n"))
            }
            None => (v.to_string(), String::new()),
        };
        let mut body = body.into_bytes();
        body.push(b'\n');
        let r = http::response(status, "application/json", &body, keep, &allow);
        self.http_respond(slot, r);
        self.http_resume(slot);
    }
}

/// Percent-decodes one path segment.
fn segment(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn api_error(status: &'static str, msg: &str) -> (&'static str, Value) {
    (status, json!({ "error": msg }))
}

/// A 405 whose JSON names the allowed method; `http_json` turns `allow` into the header.
fn not_allowed(m: &str, path: &str, allow: &str) -> (&'static str, Value) {
    (
        "405 Method Not Allowed",
        json!({ "error": format!("{m} is not allowed on {path}"), "allow": allow }),
    )
}

impl Worker {
    /// The JSON API under `/api/`. Answers now (errors) or starts a push or query whose
    /// completion answers.
    pub(super) fn api_request(&mut self, slot: usize, id: u64, req: &http::Request) {
        let path = req.path.trim_end_matches('/');
        let parts: Vec<String> = path
            .trim_start_matches("/api/")
            .split('/')
            .map(segment)
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let body = || -> Result<Value, (&'static str, Value)> {
            if req.body.is_empty() {
                return Ok(json!({}));
            }
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(api_error("400 Bad Request", "body must be a JSON object")),
            }
        };
        let query_param = |k: &str| {
            form_urlencoded::parse(req.query.as_bytes())
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        let m = req.method.as_str();
        let reply = QReply::Http { slot, id };
        let res: Result<(), (&'static str, Value)> = (|| match (m, parts.as_slice()) {
            ("POST", ["push"]) => {
                let b = body()?;
                self.api_push(slot, id, &b)
            }
            ("POST", ["groups", g, "members"]) => {
                let b = body()?;
                let uid = b.get("uid").and_then(|u| match u {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                });
                let uid = uid.ok_or_else(|| {
                    api_error("400 Bad Request", "`uid` must be a non-empty string")
                })?;
                self.query(json!({"q":"join","uid":uid,"group":g}), reply.clone());
                Ok(())
            }
            ("DELETE", ["groups", g, "members", uid]) => {
                self.query(json!({"q":"leave","uid":uid,"group":g}), reply.clone());
                Ok(())
            }
            ("DELETE", ["groups", g]) => {
                self.query(json!({"q":"ungroup","group":g}), reply.clone());
                Ok(())
            }
            ("GET", ["online", uid]) => {
                self.query(json!({"q":"online","uid":uid}), reply.clone());
                Ok(())
            }
            ("GET", ["uids"]) => {
                self.query(
                    json!({"q":"uids","group":query_param("group")}),
                    reply.clone(),
                );
                Ok(())
            }
            ("GET", ["groups"]) => {
                self.query(json!({"q":"groups"}), reply.clone());
                Ok(())
            }
            ("GET", ["stats"]) => {
                self.query(json!({"q":"stats"}), reply.clone());
                Ok(())
            }
            ("POST", ["kick", uid]) => {
                let b = body()?;
                self.query(
                    json!({"q":"kick","uid":uid,"data":b.get("data")}),
                    reply.clone(),
                );
                Ok(())
            }
            (_, ["push"] | ["groups", _, "members"] | ["kick", _]) => {
                Err(not_allowed(m, path, "POST"))
            }
            (_, ["groups", _, "members", _] | ["groups", _]) => Err(not_allowed(m, path, "DELETE")),
            (_, ["online", _] | ["uids"] | ["groups"] | ["stats"]) => {
                Err(not_allowed(m, path, "GET"))
            }
            _ => Err(api_error(
                "404 Not Found",
                &format!("no such endpoint: {path}"),
            )),
        })();
        if let Err((status, v)) = res {
            self.http_json(slot, id, status, &v);
        }
    }

    fn api_push(&mut self, slot: usize, id: u64, b: &Value) -> Result<(), (&'static str, Value)> {
        let bad = |m: &str| api_error("400 Bad Request", m);
        let list = |v: &Value, k: &str| -> Result<Vec<String>, (&'static str, Value)> {
            let one = |x: &Value| match x {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| one(x).ok_or_else(|| bad(&format!("`{k}` must hold strings"))))
                    .collect(),
                x => one(x)
                    .map(|s| vec![s])
                    .ok_or_else(|| bad(&format!("`{k}` must be a string or an array of strings"))),
            }
        };
        let target = match (b.get("to"), b.get("group"), b.get("all")) {
            (Some(to), None, None) => Target::Uids(list(to, "to")?),
            (None, Some(g), None) => Target::Groups(list(g, "group")?),
            (None, None, Some(Value::Bool(true))) => Target::All,
            _ => return Err(bad("give exactly one of `to`, `group` or `\"all\": true`")),
        };
        let exclude = match b.get("exclude") {
            None | Some(Value::Null) => Vec::new(),
            Some(e) => list(e, "exclude")?,
        };
        let binary = b.get("binary").and_then(Value::as_bool).unwrap_or(false);
        let data = b.get("data").ok_or_else(|| bad("missing `data`"))?;
        let payload = if binary {
            use base64::Engine;
            let s = data
                .as_str()
                .ok_or_else(|| bad("binary `data` must be base64"))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad("binary `data` is not valid base64"))?
        } else {
            text::data_bytes(data)
        };
        if let Some(Proto::Http(h)) = self.conns.get_mut(slot).map(|c| &mut c.proto) {
            h.waiting = true;
        }
        let reply = ReplyTo::Http {
            slot,
            id,
            kind: ReplyKind::Count,
        };
        self.push(target.into(), exclude, &payload, binary, reply);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_and_rendering() {
        let req = json!({"q":"uids","as":"count"});
        let m = merge(
            &req,
            &[
                json!({"connections":2,"uids":["a","b"]}),
                json!({"connections":1,"uids":["b"]}),
            ],
        );
        assert_eq!(
            render_text(&req, &m, false),
            b"{\"connections\":3,\"uids\":2}\n"
        );
        let req = json!({"q":"uids"});
        assert_eq!(render_text(&req, &m, false), b"[\"a\",\"b\"]\n");
        let req = json!({"q":"groups"});
        let m = merge(
            &req,
            &[
                json!({"groups":{"g":["a"]}}),
                json!({"groups":{"g":["b","a"]}}),
            ],
        );
        assert_eq!(render_text(&req, &m, false), b"{\"g\":2}\n");
        let req = json!({"q":"online"});
        let m = merge(&req, &[json!({"connections":0}), json!({"connections":1})]);
        assert_eq!(render_text(&req, &m, true), b"1\n");
        let (_, v) = render_http(&req, &m, true);
        assert_eq!(v, json!({"online":true,"connections":1,"partial":true}));
    }
}
