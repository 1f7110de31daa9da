//! Issue 5, end to end: groups, presence, queries and kicks answered for the whole server, on
//! both backend surfaces (the text port's commands and the HTTP JSON API), with 3 workers and
//! clients placed on every worker; group push to 1,000 members exactly once per connection;
//! group membership that belongs to the uid; `group_ttl`; a frozen worker giving
//! `"partial":true` answers in time; the PHP client class `scripts/php/Herald.php`; and the
//! server's JSON answers checked against `scripts/openapi.yaml`.
//!
//! Synchronisation: servers run with `login_reply=true` and every client waits for its login
//! reply; `Server::wait_mesh` (or [`wait_mesh_auth`]) first waits for the sibling links. Which
//! worker holds a connection is read from `/proc` ([`Owners`]); [`placed`] opens connections
//! until every worker holds the wanted number, so the spread is certain, and every test also
//! asserts it. "Nothing more arrived" is checked with an end marker pushed to everyone last:
//! each client's messages up to the marker must be exactly the expected list.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// What a WebSocket client received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum M {
    /// A text frame.
    T(String),
    /// A binary frame.
    B(Vec<u8>),
    /// A close frame with this code.
    Close(u16),
}

fn t(s: &str) -> M {
    M::T(s.to_owned())
}

/// The next message (pings and pongs skipped); panics if none arrives within `REPLY`.
fn next(ws: &mut Ws) -> M {
    let deadline = Instant::now() + REPLY;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv(left) {
            Ok(Message::Text(s)) => return M::T(s.as_str().to_owned()),
            Ok(Message::Binary(b)) => return M::B(b.to_vec()),
            Ok(Message::Close(f)) => return M::Close(f.map(|f| u16::from(f.code)).unwrap_or(0)),
            Ok(_) => continue,
            Err(e) => panic!("no message within {REPLY:?}: {e:?}"),
        }
    }
}

/// Messages up to and including the end marker `end` (or a close frame).
fn until_end(ws: &mut Ws) -> Vec<M> {
    until_end_of(ws, "end")
}

/// Messages up to and including the text `last`.
fn until_end_of(ws: &mut Ws, last: &str) -> Vec<M> {
    let mut out = Vec::new();
    loop {
        let m = next(ws);
        let done = m == t(last) || matches!(m, M::Close(_));
        out.push(m);
        if done || out.len() > 100 {
            return out;
        }
    }
}

/// Sends `uid` as the login frame and waits for the login reply.
fn login(ws: &mut Ws, uid: &str) {
    ws.send_text(uid);
    assert_eq!(
        ws.recv_text(REPLY),
        format!("login success, your uid is {uid}")
    );
}

/// The worker pids, sorted.
fn pids(srv: &Server) -> Vec<u32> {
    let p: Vec<u32> = srv.worker_pids().into_iter().collect();
    assert_eq!(p.len(), srv.workers, "worker processes");
    p
}

/// Opens WebSocket connections (not logged in) until every worker holds `per_worker` of them;
/// returns them by worker (in the order of [`pids`]). The extra ones are closed.
fn placed(srv: &Server, per_worker: usize) -> Vec<Vec<Ws>> {
    let pids = pids(srv);
    let set: BTreeSet<u32> = pids.iter().copied().collect();
    let mut out: Vec<Vec<Ws>> = pids.iter().map(|_| Vec::new()).collect();
    let mut tries = 0;
    while out.iter().any(|v| v.len() < per_worker) {
        tries += 1;
        assert!(
            tries < 200 + 20 * per_worker * pids.len(),
            "the kernel never spread connections over all workers: {:?}",
            out.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let ws = srv.ws_connect();
        let owner = Owners::snapshot(&set)
            .owner(ws.tcp())
            .expect("a worker holds the connection");
        let i = pids.iter().position(|p| *p == owner).expect("a worker");
        if out[i].len() < per_worker {
            out[i].push(ws);
        }
    }
    out
}

/// Two clients on each of three workers, logged in as `uids` in worker order (the first two on
/// worker 0, the next two on worker 1, the last two on worker 2).
fn two_per_worker(srv: &Server, uids: [&str; 6]) -> [Ws; 6] {
    let mut clients: Vec<Ws> = placed(srv, 2).into_iter().flatten().collect();
    for (ws, uid) in clients.iter_mut().zip(uids) {
        login(ws, uid);
    }
    let tcps: Vec<&TcpStream> = clients.iter().map(Ws::tcp).collect();
    let by = assert_spread(srv, &tcps);
    eprintln!("clients per worker: {by:?}");
    match <[Ws; 6]>::try_from(clients) {
        Ok(six) => six,
        Err(v) => panic!("{} clients placed, not 6", v.len()),
    }
}

/// How many of `conns` each worker holds; asserts they are on every worker.
fn assert_spread(srv: &Server, conns: &[&TcpStream]) -> BTreeMap<u32, usize> {
    let owners = Owners::snapshot(&srv.worker_pids());
    let mut by = BTreeMap::new();
    for c in conns {
        let pid = owners.owner(c).expect("a worker holds the connection");
        *by.entry(pid).or_insert(0) += 1;
    }
    assert!(
        by.len() >= 2,
        "all clients landed in one worker {by:?}: cross-worker answers not exercised"
    );
    assert_eq!(by.len(), srv.workers, "clients on every worker: {by:?}");
    by
}

/// Which worker holds `c`.
fn owner_of(srv: &Server, c: &TcpStream) -> u32 {
    Owners::snapshot(&srv.worker_pids())
        .owner(c)
        .expect("a worker holds the connection")
}

/// A 3-worker server with login replies (and `sets`), its sibling links up. `auth_timeout`
/// is raised: [`placed`] connections wait unauthenticated until the test logs them in.
fn start3(sets: &[&str]) -> Server {
    let mut b = Server::builder()
        .workers(3)
        .login_reply()
        .set("auth_timeout=60");
    for s in sets {
        b = b.set(s);
    }
    let srv = b.start();
    srv.wait_mesh();
    srv
}

/// `Server::wait_mesh` for a server with a push secret: the probe pushes authenticate first.
fn wait_mesh_auth(srv: &Server, secret: &str) {
    let mut probe = srv.ws_connect();
    login(&mut probe, "mesh-probe");
    let bytes = format!(
        "{{\"cmd\":\"auth\",\"secret\":\"{secret}\"}}\n{{\"uid\":\"mesh-probe\",\"probe\":true}}\n"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    while in_a_row < 10 * srv.workers {
        let reply = srv.text_push(bytes.as_bytes());
        if reply == b"ok\nok\n" {
            in_a_row += 1;
        } else {
            assert_eq!(reply, b"ok\nfail\n", "probe push");
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(Instant::now() < deadline, "mesh not up within 15 s");
    }
    probe.close();
}

/// Sends one command line on `tc` and returns its reply line.
fn cmd(tc: &mut TextConn, line: &str) -> String {
    tc.send(format!("{line}\n").as_bytes());
    String::from_utf8(tc.read_lines(1, REPLY)).expect("utf-8 reply")
}

/// Sends `lines` in one write and returns the replies, one string per line.
fn pipelined(tc: &mut TextConn, lines: &[String], limit: Duration) -> Vec<String> {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    tc.send(&bytes);
    let out = String::from_utf8(tc.read_lines(lines.len(), limit)).expect("utf-8");
    out.split_inclusive('\n').map(str::to_owned).collect()
}

/// A text connection that has answered once (so its worker has accepted it).
fn text_conn(srv: &Server) -> TextConn {
    let mut tc = TextConn::connect(srv.text);
    assert_eq!(cmd(&mut tc, r#"{"cmd":"online","uid":"nobody"}"#), "0\n");
    tc
}

// ---------------------------------------------------------------------------------------------
// HTTP and the OpenAPI document
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 request with a JSON body (`Connection: close` unless `keep`).
fn request(method: &str, target: &str, body: Option<&str>, extra: &str, keep: bool) -> Vec<u8> {
    let conn = if keep { "" } else { "Connection: close\r\n" };
    let body_head = match body {
        Some(b) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None => String::new(),
    };
    format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{conn}{extra}{body_head}\r\n{}",
        body.unwrap_or("")
    )
    .into_bytes()
}

/// The parsed `scripts/openapi.yaml`, and which operations the test exercised.
struct Api {
    doc: Value,
    /// (path template, method, status) seen.
    seen: BTreeSet<(String, String, u16)>,
}

impl Api {
    fn load() -> Api {
        let text = std::fs::read_to_string(script("scripts/openapi.yaml")).expect("openapi.yaml");
        let doc: Value = serde_yaml::from_str(&text).expect("openapi.yaml is YAML");
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "an OpenAPI 3 document"
        );
        Api {
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// Follows `$ref`s (local ones: `#/components/...`).
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let ptr = r.strip_prefix('#').expect("local $ref");
                    v = self
                        .doc
                        .pointer(ptr)
                        .unwrap_or_else(|| panic!("dangling $ref {r}"));
                }
                None => return v,
            }
        }
        panic!("$ref loop");
    }

    /// The path template matching `path` (literal segments preferred over `{params}`).
    fn template(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, String)> = None;
        for tpl in self.doc["paths"].as_object()?.keys() {
            let ts: Vec<&str> = tpl.split('/').collect();
            if ts.len() != segs.len() {
                continue;
            }
            let mut literal = 0;
            let ok = ts.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if ok && best.as_ref().is_none_or(|(l, _)| literal > *l) {
                best = Some((literal, tpl.clone()));
            }
        }
        best.map(|(_, t)| t)
    }

    /// Validates `v` against `schema`; returns the mismatches.
    fn check(&self, schema: &Value, v: &Value, at: &str) -> Vec<String> {
        let s = self.resolve(schema);
        let mut errs = Vec::new();
        if v.is_null() && s["nullable"] == json!(true) {
            return errs;
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                let n = alts
                    .iter()
                    .filter(|a| self.check(a, v, at).is_empty())
                    .count();
                if n == 0 || (exactly_one && n > 1) {
                    errs.push(format!("{at}: {v} matches {n} of the {key} alternatives"));
                }
            }
        }
        if let Some(ty) = s.get("type").and_then(Value::as_str) {
            let ok = match ty {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                other => panic!("unknown schema type {other}"),
            };
            if !ok {
                errs.push(format!("{at}: {v} is not of type {ty}"));
                return errs;
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                errs.push(format!("{at}: {v} is not one of {e:?}"));
            }
        }
        if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
            if n < min {
                errs.push(format!("{at}: {n} < minimum {min}"));
            }
        }
        if let (Some(min), Some(st)) = (s.get("minLength").and_then(Value::as_u64), v.as_str()) {
            if (st.chars().count() as u64) < min {
                errs.push(format!("{at}: {st:?} shorter than {min}"));
            }
        }
        if let Some(obj) = v.as_object() {
            for r in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().expect("required names");
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: missing required key {r:?} in {v}"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, val) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => errs.extend(self.check(ps, val, &format!("{at}.{k}"))),
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errs.push(format!("{at}: unexpected key {k:?} in {v}"))
                        }
                        Some(ap @ Value::Object(_)) => {
                            errs.extend(self.check(ap, val, &format!("{at}.{k}")))
                        }
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
            for (i, x) in arr.iter().enumerate() {
                errs.extend(self.check(items, x, &format!("{at}[{i}]")));
            }
        }
        errs
    }

    /// Asserts that `resp` (to `method target`, with request body `body`) is what the document
    /// says: a documented status for the operation, a documented content type, and a body
    /// matching the schema. A method the path does not have must be answered 405 as some
    /// operation of that path documents it. Returns the JSON body (or the text as a string).
    fn conform(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&str>,
        resp: &HttpResponse,
    ) -> Value {
        let path = target.split('?').next().unwrap_or(target);
        let what = format!("{method} {target} -> {} {}", resp.status, resp.text());
        let tpl = self
            .template(path)
            .unwrap_or_else(|| panic!("{what}: path not in openapi.yaml"));
        let item = self.doc["paths"][&tpl].clone();
        let m = method.to_ascii_lowercase();
        let code = resp.status.to_string();
        let response = match item.get(&m) {
            Some(op) => {
                let r = op["responses"]
                    .get(&code)
                    .or_else(|| op["responses"].get("default"))
                    .unwrap_or_else(|| panic!("{what}: status {code} not documented"));
                if let (Some(b), true) = (body, resp.status == 200) {
                    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                    if !schema.is_null() {
                        let v: Value = serde_json::from_str(b).expect("test request body JSON");
                        let errs = self.check(schema, &v, "request");
                        assert!(errs.is_empty(), "{what}: request body vs schema: {errs:#?}");
                    }
                }
                r.clone()
            }
            None => {
                assert_eq!(resp.status, 405, "{what}: {method} is not in openapi.yaml");
                item.as_object()
                    .and_then(|o| {
                        o.values()
                            .find_map(|op| op["responses"].get("405").cloned())
                    })
                    .unwrap_or_else(|| panic!("{what}: no operation of {tpl} documents 405"))
            }
        };
        let response = self.resolve(&response).clone();
        let ct = resp.header("content-type").unwrap_or_default();
        let ct = ct.split(';').next().unwrap_or("").trim().to_owned();
        let media = response["content"].get(&ct).unwrap_or_else(|| {
            panic!(
                "{what}: content type {ct:?} not documented (documented: {:?})",
                response["content"]
                    .as_object()
                    .map(|o| o.keys().collect::<Vec<_>>())
            )
        });
        let v = if ct == "application/json" {
            serde_json::from_slice(&resp.body)
                .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"))
        } else {
            Value::String(resp.text())
        };
        let errs = self.check(&media["schema"], &v, "response");
        assert!(errs.is_empty(), "{what}: response vs schema: {errs:#?}");
        self.seen.insert((tpl, m, resp.status));
        v
    }

    /// Sends a request on a fresh connection, checks the answer against the document, and
    /// returns (status, body).
    fn call(
        &mut self,
        srv: &Server,
        method: &str,
        target: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        self.call_with(srv, method, target, body, "")
    }

    fn call_with(
        &mut self,
        srv: &Server,
        method: &str,
        target: &str,
        body: Option<&str>,
        extra: &str,
    ) -> (u16, Value) {
        let resp = srv.http(&request(method, target, body, extra, false));
        let v = self.conform(method, target, body, &resp);
        (resp.status, v)
    }

    /// Every (path, method) of the document that was never answered with a 2xx (or, for the
    /// catch-all `/api/{unknown}`, a 404).
    fn uncovered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (tpl, item) in self.doc["paths"].as_object().expect("paths") {
            for m in item.as_object().expect("path item").keys() {
                if !["get", "post", "put", "delete", "patch"].contains(&m.as_str()) {
                    continue;
                }
                let hit = self
                    .seen
                    .iter()
                    .any(|(t, mm, st)| t == tpl && mm == m && (*st < 300 || *st == 404));
                if !hit {
                    out.push(format!("{} {tpl}", m.to_uppercase()));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Text port: every command
// ---------------------------------------------------------------------------------------------

#[test]
fn text_port_every_command_across_three_workers() {
    let srv = start3(&[]);
    // Worker 0: a, d. Worker 1: a (again), b. Worker 2: c, "123" (a numeric uid).
    let [mut a1, mut d, mut a2, mut b, mut c, mut n123] =
        two_per_worker(&srv, ["a", "d", "a", "b", "c", "123"]);

    let mut tc = text_conn(&srv);
    let mut q = |line: &str| cmd(&mut tc, line);

    // Presence and counts.
    assert_eq!(q(r#"{"cmd":"online","uid":"a"}"#), "1\n");
    assert_eq!(q(r#"{"cmd":"online","uid":"c"}"#), "1\n");
    assert_eq!(q(r#"{"cmd":"online","uid":123}"#), "1\n");
    assert_eq!(q(r#"{"cmd":"online","uid":"zz"}"#), "0\n");
    assert_eq!(q(r#"{"cmd":"count"}"#), "{\"connections\":6,\"uids\":5}\n");
    assert_eq!(
        q(r#"{"cmd":"uids"}"#),
        "[\"123\",\"a\",\"b\",\"c\",\"d\"]\n"
    );

    // Pushes to uids.
    assert_eq!(q(r#"{"cmd":"push","to":"a","data":"to a"}"#), "ok\n");
    assert_eq!(
        q(r#"{"cmd":"push","to":["b","c","zz"],"data":{"k":[1, 2]}}"#),
        "ok\n"
    );
    assert_eq!(q(r#"{"cmd":"push","to":"zz","data":"nobody"}"#), "fail\n");
    assert_eq!(
        q(r#"{"cmd":"push","to":["a","b"],"data":"x","exclude":["a"]}"#),
        "ok\n"
    );
    assert_eq!(q(r#"{"cmd":"push","to":123,"data":"num"}"#), "ok\n");

    // Groups.
    assert_eq!(q(r#"{"cmd":"join","uid":"a","group":"g1"}"#), "ok\n");
    assert_eq!(q(r#"{"cmd":"join","uid":"b","group":"g1"}"#), "ok\n");
    assert_eq!(q(r#"{"cmd":"join","uid":"c","group":"g2"}"#), "ok\n");
    assert_eq!(q(r#"{"cmd":"groups"}"#), "{\"g1\":2,\"g2\":1}\n");
    assert_eq!(
        q(r#"{"cmd":"count","group":"g1"}"#),
        "{\"connections\":3,\"uids\":2}\n"
    );
    assert_eq!(q(r#"{"cmd":"uids","group":"g1"}"#), "[\"a\",\"b\"]\n");
    assert_eq!(
        q(r#"{"cmd":"group","group":"g1","data":"hello g1","exclude":["b"]}"#),
        "ok\n"
    );
    assert_eq!(
        q(r#"{"cmd":"group","group":["g1","g2","g1"],"data":"both"}"#),
        "ok\n"
    );
    assert_eq!(q(r#"{"cmd":"group","group":"empty","data":"x"}"#), "fail\n");
    assert_eq!(
        q(r#"{"cmd":"group","group":"g1","data":"x","exclude":["a","b"]}"#),
        "fail\n"
    );

    // Everyone.
    assert_eq!(
        q(r#"{"cmd":"all","data":"everyone","exclude":["d"]}"#),
        "ok\n"
    );
    assert_eq!(
        q(r#"{"cmd":"all","data":"AAEC/w==","binary":true}"#),
        "ok\n"
    );
    assert_eq!(q(r#"{"uid":"d","percent":"88%"}"#), "ok\n");

    // Leave and ungroup.
    assert_eq!(q(r#"{"cmd":"leave","uid":"b","group":"g1"}"#), "ok\n");
    assert_eq!(
        q(r#"{"cmd":"count","group":"g1"}"#),
        "{\"connections\":2,\"uids\":1}\n"
    );
    assert_eq!(q(r#"{"cmd":"ungroup","group":"g2"}"#), "ok\n");
    assert_eq!(q(r#"{"cmd":"groups"}"#), "{\"g1\":1}\n");
    assert_eq!(q(r#"{"cmd":"uids","group":"g2"}"#), "[]\n");
    assert_eq!(
        q(r#"{"cmd":"count","group":"g2"}"#),
        "{\"connections\":0,\"uids\":0}\n"
    );
    assert_eq!(q(r#"{"cmd":"group","group":"g2","data":"x"}"#), "fail\n");

    // Malformed commands: an error naming the problem, and the connection stays usable.
    for (line, reply) in [
        (r#"{"cmd":"nope"}"#, r#"{"error":"unknown cmd `nope`"}"#),
        (r#"{"cmd":5}"#, r#"{"error":"`cmd` must be a string"}"#),
        (r#"{"cmd":"push","data":1}"#, r#"{"error":"missing `to`"}"#),
        (
            r#"{"cmd":"push","to":[1.5],"data":1}"#,
            r#"{"error":"`to` must hold strings"}"#,
        ),
        (
            r#"{"cmd":"group","group":"g1"}"#,
            r#"{"error":"missing `data`"}"#,
        ),
        (
            r#"{"cmd":"join","uid":"a"}"#,
            r#"{"error":"missing `group`"}"#,
        ),
        (
            r#"{"cmd":"count","group":""}"#,
            r#"{"error":"`group` must be a non-empty string"}"#,
        ),
        (
            r#"{"cmd":"all","data":"!","binary":true}"#,
            r#"{"error":"binary `data` is not valid base64"}"#,
        ),
        (
            r#"{"cmd":"all","data":"x","exclude":"#,
            "fail", // not JSON at all: the seeds' answer
        ),
        (r#"{"cmd":"online"}"#, r#"{"error":"missing `uid`"}"#),
        (r#"{"cmd":"kick"}"#, r#"{"error":"missing `uid`"}"#),
    ] {
        assert_eq!(q(line), format!("{reply}\n"), "reply to {line}");
    }
    assert_eq!(q(r#"{"cmd":"online","uid":"a"}"#), "1\n");

    // Pipelined: replies in order, one line each.
    let lines: Vec<String> = [
        r#"{"cmd":"online","uid":"b"}"#,
        r#"{"cmd":"nope"}"#,
        r#"{"cmd":"count"}"#,
        r#"{"cmd":"push","to":"zz","data":1}"#,
        r#"{"cmd":"groups"}"#,
        r#"{"cmd":"uids","group":"g1"}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        pipelined(&mut tc, &lines, REPLY),
        [
            "1\n",
            "{\"error\":\"unknown cmd `nope`\"}\n",
            "{\"connections\":6,\"uids\":5}\n",
            "fail\n",
            "{\"g1\":1}\n",
            "[\"a\"]\n"
        ]
    );

    // Exactly what each client received, up to the end marker.
    assert_eq!(cmd(&mut tc, r#"{"cmd":"all","data":"end"}"#), "ok\n");
    let bin = M::B(vec![0, 1, 2, 255]);
    for (ws, who) in [(&mut a1, "a@0"), (&mut a2, "a@1")] {
        assert_eq!(
            until_end(ws),
            [
                t("to a"),
                t("hello g1"),
                t("both"),
                t("everyone"),
                bin.clone(),
                t("end")
            ],
            "{who}"
        );
    }
    assert_eq!(
        until_end(&mut b),
        [
            t(r#"{"k":[1,2]}"#),
            t("x"),
            t("both"),
            t("everyone"),
            bin.clone(),
            t("end")
        ]
    );
    assert_eq!(
        until_end(&mut c),
        [
            t(r#"{"k":[1,2]}"#),
            t("both"),
            t("everyone"),
            bin.clone(),
            t("end")
        ]
    );
    assert_eq!(
        until_end(&mut n123),
        [t("num"), t("everyone"), bin.clone(), t("end")]
    );
    assert_eq!(
        until_end(&mut d),
        [bin.clone(), t(r#"{"uid":"d","percent":"88%"}"#), t("end")]
    );

    // Kick: the data first, then a close frame with 1000; all of the uid's connections.
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"kick","uid":"a","data":{"bye":true}}"#),
        "ok\n"
    );
    for ws in [&mut a1, &mut a2] {
        assert_eq!(next(ws), t(r#"{"bye":true}"#));
        assert_eq!(next(ws), M::Close(1000));
    }
    assert_eq!(cmd(&mut tc, r#"{"cmd":"kick","uid":"d"}"#), "ok\n");
    assert_eq!(next(&mut d), M::Close(1000));
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"kick","uid":"zz","data":"x"}"#),
        "fail\n"
    );
    assert_eq!(cmd(&mut tc, r#"{"cmd":"online","uid":"a"}"#), "0\n");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"count"}"#),
        "{\"connections\":3,\"uids\":3}\n"
    );
    assert_eq!(cmd(&mut tc, r#"{"cmd":"uids"}"#), "[\"123\",\"b\",\"c\"]\n");
}

// ---------------------------------------------------------------------------------------------
// HTTP JSON API: every endpoint, against the OpenAPI document
// ---------------------------------------------------------------------------------------------

#[test]
fn http_api_every_endpoint_conforms_to_openapi() {
    let mut api = Api::load();
    let srv = start3(&[]);
    // Worker 0: h1, h3. Worker 1: h1 (again), h4. Worker 2: h2, h5.
    let [mut h1a, mut h3, mut h1b, mut h4, mut h2, mut h5] =
        two_per_worker(&srv, ["h1", "h3", "h1", "h4", "h2", "h 5/x"]);
    let mut call = |m: &str, target: &str, body: Option<&str>| api.call(&srv, m, target, body);

    // Presence and lists.
    assert_eq!(
        call("GET", "/api/online/h1", None),
        (200, json!({"online":true,"connections":2}))
    );
    assert_eq!(
        call("GET", "/api/online/h%205%2Fx", None),
        (200, json!({"online":true,"connections":1}))
    );
    assert_eq!(
        call("GET", "/api/online/nobody", None),
        (200, json!({"online":false,"connections":0}))
    );
    // Without `history_size`, nothing is kept (tests/history.rs covers a history).
    assert_eq!(
        call("GET", "/api/history/h1", None),
        (
            200,
            json!({"uid":"h1","epoch":"0","offset":0,"messages":[]})
        )
    );
    assert_eq!(
        call("GET", "/api/uids", None),
        (
            200,
            json!({"uids":["h 5/x","h1","h2","h3","h4"],"count":5,"connections":6})
        )
    );

    // Groups.
    for (g, uid) in [("hg", "h1"), ("hg", "h2"), ("room%201", "h3"), ("hg", "h3")] {
        let body = format!("{{\"uid\":\"{uid}\"}}");
        assert_eq!(
            call("POST", &format!("/api/groups/{g}/members"), Some(&body)),
            (200, json!({"ok":true})),
            "join {uid} {g}"
        );
    }
    assert_eq!(
        call("GET", "/api/groups", None),
        (200, json!({"groups":{"hg":3,"room 1":1}}))
    );
    assert_eq!(
        call("GET", "/api/uids?group=hg", None),
        (
            200,
            json!({"uids":["h1","h2","h3"],"count":3,"connections":4})
        )
    );
    assert_eq!(
        call("GET", "/api/uids?group=room%201", None),
        (200, json!({"uids":["h3"],"count":1,"connections":1}))
    );
    assert_eq!(
        call("DELETE", "/api/groups/hg/members/h3", None),
        (200, json!({"ok":true}))
    );
    assert_eq!(
        call("GET", "/api/uids?group=hg", None),
        (200, json!({"uids":["h1","h2"],"count":2,"connections":3}))
    );

    // Pushes: delivered = connections reached.
    assert_eq!(
        call(
            "POST",
            "/api/push",
            Some(r#"{"group":"hg","data":{"m":1}}"#)
        ),
        (200, json!({"delivered":3}))
    );
    assert_eq!(
        call(
            "POST",
            "/api/push",
            Some(r#"{"group":["hg","room 1"],"data":"g2","exclude":["h2"]}"#)
        ),
        (200, json!({"delivered":3}))
    );
    assert_eq!(
        call(
            "POST",
            "/api/push",
            Some(r#"{"to":["h1","h3","h1"],"data":"t","exclude":["h1"]}"#)
        ),
        (200, json!({"delivered":1}))
    );
    assert_eq!(
        call("POST", "/api/push", Some(r#"{"to":"h4","data":"four"}"#)),
        (200, json!({"delivered":1}))
    );
    assert_eq!(
        call("POST", "/api/push", Some(r#"{"to":"nobody","data":"x"}"#)),
        (200, json!({"delivered":0}))
    );
    assert_eq!(
        call(
            "POST",
            "/api/push",
            Some(r#"{"all":true,"data":"AQI=","binary":true,"exclude":["h4"]}"#)
        ),
        (200, json!({"delivered":5}))
    );
    assert_eq!(
        call("DELETE", "/api/groups/room%201", None),
        (200, json!({"ok":true}))
    );
    assert_eq!(
        call("GET", "/api/groups", None),
        (200, json!({"groups":{"hg":2}}))
    );

    // Stats: one row per worker, totals over them.
    let (st, stats) = call("GET", "/api/stats", None);
    assert_eq!(st, 200);
    let rows = stats["workers"].as_array().expect("workers");
    let row_pids: BTreeSet<u64> = rows.iter().filter_map(|r| r["pid"].as_u64()).collect();
    let want: BTreeSet<u64> = srv.worker_pids().iter().map(|p| u64::from(*p)).collect();
    assert_eq!(row_pids, want, "one stats row per worker: {stats}");
    assert_eq!(stats["totals"]["logged_in"], json!(6), "{stats}");
    assert!(stats.get("partial").is_none(), "{stats}");

    // The seeds' publish endpoint.
    assert_eq!(
        call("GET", "/?type=publish&to=h2&content=%3Cb%3E", None),
        (200, json!("ok"))
    );
    assert_eq!(
        call("GET", "/?type=publish&to=nobody&content=x", None),
        (200, json!("offline"))
    );
    assert_eq!(
        call("GET", "/?type=subscribe&to=h2&content=x", None),
        (200, json!("fail"))
    );
    let resp = srv.http(&post_form("type=publish&to=h2&content=form"));
    assert_eq!(
        api.conform("POST", "/", None, &resp),
        json!("ok"),
        "form publish"
    );
    let mut call = |m: &str, target: &str, body: Option<&str>| api.call(&srv, m, target, body);

    // Kick.
    assert_eq!(
        call("POST", "/api/kick/h3", Some(r#"{"data":"bye"}"#)),
        (200, json!({"ok":true,"connections":1}))
    );
    assert_eq!(next(&mut h3), t("g2"));
    assert_eq!(next(&mut h3), t("t"));
    assert_eq!(next(&mut h3), M::B(vec![1, 2]));
    assert_eq!(next(&mut h3), t("bye"));
    assert_eq!(next(&mut h3), M::Close(1000));
    assert_eq!(
        call("POST", "/api/kick/h3", None),
        (200, json!({"ok":false,"connections":0}))
    );
    assert_eq!(
        call("GET", "/api/online/h3", None),
        (200, json!({"online":false,"connections":0}))
    );

    // Errors: JSON, with the right status.
    for (m, target, body, status, err) in [
        (
            "POST",
            "/api/push",
            Some(r#"{"to":"a","group":"g","data":1}"#),
            400,
            "give exactly one of `to`, `group` or `\"all\": true`",
        ),
        (
            "POST",
            "/api/push",
            Some(r#"{"all":false,"data":1}"#),
            400,
            "give exactly one of `to`, `group` or `\"all\": true`",
        ),
        (
            "POST",
            "/api/push",
            Some(r#"{"to":"h1"}"#),
            400,
            "missing `data`",
        ),
        (
            "POST",
            "/api/push",
            Some(r#"{"to":["h1",{}],"data":1}"#),
            400,
            "`to` must hold strings",
        ),
        (
            "POST",
            "/api/push",
            Some(r#"{"all":true,"data":"!!","binary":true}"#),
            400,
            "binary `data` is not valid base64",
        ),
        (
            "POST",
            "/api/push",
            Some("[1,2]"),
            400,
            "body must be a JSON object",
        ),
        (
            "POST",
            "/api/push",
            Some("not json"),
            400,
            "body must be a JSON object",
        ),
        (
            "POST",
            "/api/groups/hg/members",
            Some("{}"),
            400,
            "`uid` must be a non-empty string",
        ),
        (
            "POST",
            "/api/groups/hg/members",
            Some(r#"{"uid":""}"#),
            400,
            "`uid` must be a non-empty string",
        ),
        (
            "POST",
            "/api/kick/h1",
            Some("[]"),
            400,
            "body must be a JSON object",
        ),
        (
            "GET",
            "/api/push",
            None,
            405,
            "GET is not allowed on /api/push",
        ),
        (
            "PUT",
            "/api/groups",
            None,
            405,
            "PUT is not allowed on /api/groups",
        ),
        (
            "GET",
            "/api/groups/hg",
            None,
            405,
            "GET is not allowed on /api/groups/hg",
        ),
        (
            "POST",
            "/api/online/h1",
            None,
            405,
            "POST is not allowed on /api/online/h1",
        ),
        ("GET", "/api/nope", None, 404, "no such endpoint: /api/nope"),
    ] {
        assert_eq!(
            call(m, target, body),
            (status, json!({ "error": err })),
            "{m} {target} {body:?}"
        );
    }

    // Keep-alive: several API requests on one connection, answered in order.
    let mut conn = HttpConn::connect(srv.http);
    let reqs = [
        ("GET", "/api/online/h1", None),
        ("POST", "/api/push", Some(r#"{"to":"h4","data":"ka"}"#)),
        ("GET", "/api/nope", None),
        ("GET", "/api/uids?group=hg", None),
    ];
    let mut bytes = Vec::new();
    for (m, target, body) in reqs {
        bytes.extend(request(m, target, body, "", true));
    }
    conn.send(&bytes).expect("pipelined requests");
    let mut answers = Vec::new();
    for (m, target, body) in reqs {
        let r = conn.read_response(REPLY);
        answers.push((r.status, api.conform(m, target, body, &r)));
    }
    assert_eq!(
        answers,
        [
            (200, json!({"online":true,"connections":2})),
            (200, json!({"delivered":1})),
            (404, json!({"error":"no such endpoint: /api/nope"})),
            (200, json!({"uids":["h1","h2"],"count":2,"connections":3})),
        ]
    );

    // Exactly what the clients received, up to the end marker.
    let resp = srv.http(&request(
        "POST",
        "/api/push",
        Some(r#"{"all":true,"data":"end"}"#),
        "",
        false,
    ));
    assert_eq!(resp.text(), "{\"delivered\":5}\n");
    let bin = M::B(vec![1, 2]);
    for (ws, who) in [(&mut h1a, "h1@0"), (&mut h1b, "h1@1")] {
        assert_eq!(
            until_end(ws),
            [t(r#"{"m":1}"#), t("g2"), bin.clone(), t("end")],
            "{who}"
        );
    }
    assert_eq!(
        until_end(&mut h2),
        [
            t(r#"{"m":1}"#),
            bin.clone(),
            t("&lt;b&gt;"),
            t("form"),
            t("end")
        ]
    );
    assert_eq!(until_end(&mut h4), [t("four"), t("ka"), t("end")]);
    assert_eq!(until_end(&mut h5), [bin.clone(), t("end")]);

    let missing = api.uncovered();
    assert!(
        missing.is_empty(),
        "operations of openapi.yaml never exercised: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Group push to 1,000 members
// ---------------------------------------------------------------------------------------------

#[test]
fn group_push_to_1000_members_over_3_workers_reaches_each_connection_once() {
    let srv = start3(&[]);
    // 990 uids with one connection, 5 with two: 1,000 member connections; 5 non-members.
    let mut uids: Vec<String> = (0..995).map(|i| format!("m{i}")).collect();
    uids.extend((990..995).map(|i| format!("m{i}")));
    uids.extend((0..5).map(|i| format!("n{i}")));
    // Handshakes are round trips: run them from 8 threads, each sending its logins.
    let port = srv.ws;
    let mut clients: Vec<Ws> = std::thread::scope(|s| {
        let handles: Vec<_> = uids
            .chunks(uids.len().div_ceil(8))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|u| {
                            let mut c = ws_connect(port);
                            c.send_text(u);
                            c
                        })
                        .collect::<Vec<Ws>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("connect thread"))
            .collect()
    });
    for (c, u) in clients.iter_mut().zip(&uids) {
        assert_eq!(
            c.recv_text(REPLY),
            format!("login success, your uid is {u}")
        );
    }
    let tcps: Vec<&TcpStream> = clients.iter().map(Ws::tcp).collect();
    let by = assert_spread(&srv, &tcps);
    eprintln!("1,005 clients per worker: {by:?}");

    let mut tc = text_conn(&srv);
    let joins: Vec<String> = (0..995)
        .map(|i| format!("{{\"cmd\":\"join\",\"uid\":\"m{i}\",\"group\":\"big\"}}"))
        .collect();
    let replies = pipelined(&mut tc, &joins, Duration::from_secs(10));
    assert!(replies.iter().all(|r| r == "ok\n"), "join replies");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"count","group":"big"}"#),
        "{\"connections\":1000,\"uids\":995}\n"
    );
    assert_eq!(cmd(&mut tc, r#"{"cmd":"groups"}"#), "{\"big\":995}\n");
    let list = cmd(&mut tc, r#"{"cmd":"uids","group":"big"}"#);
    let list: BTreeSet<String> = serde_json::from_str(&list).expect("uid list");
    assert_eq!(list, (0..995).map(|i| format!("m{i}")).collect());

    // HTTP: delivered counts connections, each once.
    let resp = srv.http(&request(
        "POST",
        "/api/push",
        Some(r#"{"group":"big","data":"once"}"#),
        "",
        false,
    ));
    assert_eq!(resp.text(), "{\"delivered\":1000}\n");
    // Text: the group named twice, plus a member excluded.
    assert_eq!(
        cmd(
            &mut tc,
            r#"{"cmd":"group","group":["big","big"],"data":"twice named","exclude":["m7"]}"#
        ),
        "ok\n"
    );
    assert_eq!(cmd(&mut tc, r#"{"cmd":"all","data":"end"}"#), "ok\n");
    for (i, (c, u)) in clients.iter_mut().zip(&uids).enumerate() {
        let want: Vec<M> = if u.starts_with('n') {
            vec![t("end")]
        } else if u == "m7" {
            vec![t("once"), t("end")]
        } else {
            vec![t("once"), t("twice named"), t("end")]
        };
        assert_eq!(until_end(c), want, "client #{i} ({u})");
    }
}

// ---------------------------------------------------------------------------------------------
// Membership belongs to the uid
// ---------------------------------------------------------------------------------------------

#[test]
fn membership_belongs_to_the_uid_across_workers_and_later_logins() {
    let srv = start3(&[]);
    let mut tc = text_conn(&srv);
    let mut by_worker = placed(&srv, 3);

    // "late" joins while offline; then logs in on every worker.
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"join","uid":"late","group":"gl"}"#),
        "ok\n"
    );
    // "early" is online on worker 0 when it joins; then logs in on workers 1 and 2.
    let mut early0 = by_worker[0].pop().unwrap();
    login(&mut early0, "early");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"join","uid":"early","group":"ge"}"#),
        "ok\n"
    );
    let mut late: Vec<Ws> = Vec::new();
    let mut early: Vec<Ws> = vec![early0];
    for w in by_worker.iter_mut() {
        let mut c = w.pop().unwrap();
        login(&mut c, "late");
        late.push(c);
    }
    for w in by_worker.iter_mut().skip(1) {
        let mut c = w.pop().unwrap();
        login(&mut c, "early");
        early.push(c);
    }
    let tcps: Vec<&TcpStream> = late.iter().chain(&early).map(Ws::tcp).collect();
    assert_spread(&srv, &tcps);

    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"count","group":"gl"}"#),
        "{\"connections\":3,\"uids\":1}\n"
    );
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"count","group":"ge"}"#),
        "{\"connections\":3,\"uids\":1}\n"
    );
    let resp = srv.http(&request(
        "POST",
        "/api/push",
        Some(r#"{"group":"gl","data":"to gl"}"#),
        "",
        false,
    ));
    assert_eq!(resp.text(), "{\"delivered\":3}\n");
    let resp = srv.http(&request(
        "POST",
        "/api/push",
        Some(r#"{"group":"ge","data":"to ge"}"#),
        "",
        false,
    ));
    assert_eq!(resp.text(), "{\"delivered\":3}\n");
    for (i, c) in late.iter_mut().enumerate() {
        assert_eq!(next(c), t("to gl"), "late on worker {i}");
    }
    for (i, c) in early.iter_mut().enumerate() {
        assert_eq!(next(c), t("to ge"), "early on worker {i}");
    }

    // After leaving, neither the existing connections nor a later login are in the group.
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"leave","uid":"early","group":"ge"}"#),
        "ok\n"
    );
    let mut early_again = by_worker[0].pop().unwrap();
    login(&mut early_again, "early");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"group","group":"ge","data":"x"}"#),
        "fail\n"
    );
    assert_eq!(cmd(&mut tc, r#"{"cmd":"groups"}"#), "{\"gl\":1}\n");

    // All of "late"'s connections close: within group_ttl (default 5 minutes) the membership
    // lives on, and a new login (on any worker) is in the group again.
    for c in late.drain(..) {
        c.close();
    }
    assert_eq!(cmd(&mut tc, r#"{"cmd":"online","uid":"late"}"#), "0\n");
    assert_eq!(cmd(&mut tc, r#"{"cmd":"groups"}"#), "{\"gl\":1}\n");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"group","group":"gl","data":"x"}"#),
        "fail\n"
    );
    let mut back = Vec::new();
    for w in by_worker.iter_mut().skip(1) {
        let mut c = w.pop().unwrap();
        login(&mut c, "late");
        back.push(c);
    }
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"group","group":"gl","data":"back"}"#),
        "ok\n"
    );
    for c in back.iter_mut() {
        assert_eq!(next(c), t("back"));
    }

    // Nothing else reached anyone.
    assert_eq!(cmd(&mut tc, r#"{"cmd":"all","data":"end"}"#), "ok\n");
    for c in early.iter_mut().chain(back.iter_mut()) {
        assert_eq!(until_end(c), [t("end")]);
    }
    assert_eq!(until_end(&mut early_again), [t("end")]);
}

#[test]
fn group_ttl_ends_memberships_of_uids_without_connections() {
    let srv = start3(&["group_ttl=1"]);
    let mut tc = text_conn(&srv);
    let mut by_worker = placed(&srv, 1);
    let mut stayer = by_worker[0].pop().unwrap();
    login(&mut stayer, "stayer");
    let mut leaver = by_worker[1].pop().unwrap();
    login(&mut leaver, "leaver");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"join","uid":"ghost","group":"gt"}"#),
        "ok\n"
    );
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"join","uid":"leaver","group":"gt"}"#),
        "ok\n"
    );
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"join","uid":"stayer","group":"gs"}"#),
        "ok\n"
    );
    let joined = Instant::now();
    leaver.close();
    assert_eq!(cmd(&mut tc, r#"{"cmd":"groups"}"#), "{\"gs\":1,\"gt\":2}\n");
    let mut last = String::new();
    let gone = wait_until(Duration::from_secs(6), || {
        last = cmd(&mut tc, r#"{"cmd":"groups"}"#);
        last == "{\"gs\":1}\n"
    });
    assert!(
        gone,
        "memberships without connections never expired: {last:?}"
    );
    assert!(
        joined.elapsed() >= Duration::from_millis(900),
        "expired before group_ttl: {:?}",
        joined.elapsed()
    );
    // The member with a connection keeps its group.
    assert_eq!(
        cmd(
            &mut tc,
            r#"{"cmd":"group","group":"gs","data":"still here"}"#
        ),
        "ok\n"
    );
    assert_eq!(next(&mut stayer), t("still here"));
}

// ---------------------------------------------------------------------------------------------
// A frozen worker
// ---------------------------------------------------------------------------------------------

/// SIGCONTs the worker on drop, so a failing test never leaves it stopped.
struct Frozen(u32);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn frozen_worker_gives_partial_answers_in_time() {
    let mut api = Api::load();
    let srv = start3(&["ipc_timeout=0.5"]);
    let pids = pids(&srv);
    let by_worker = placed(&srv, 2);
    let mut clients: Vec<(String, Ws, u32)> = Vec::new();
    for (w, conns) in by_worker.into_iter().enumerate() {
        for (j, mut c) in conns.into_iter().enumerate() {
            let uid = format!("f{w}{j}");
            login(&mut c, &uid);
            clients.push((uid, c, pids[w]));
        }
    }
    let tcps: Vec<&TcpStream> = clients.iter().map(|(_, c, _)| c.tcp()).collect();
    assert_spread(&srv, &tcps);

    // Entry connections (text and keep-alive HTTP), already accepted by their workers.
    let mut tc = text_conn(&srv);
    let mut hc = HttpConn::connect(srv.http);
    hc.send(&request("GET", "/api/online/x", None, "", true))
        .expect("request");
    assert_eq!(hc.read_response(REPLY).status, 200);
    let entries = [owner_of(&srv, &tc.stream), owner_of(&srv, &hc.stream)];
    let frozen_pid = *pids
        .iter()
        .find(|p| !entries.contains(p))
        .expect("a worker holding neither entry connection");
    let frozen_uids: Vec<String> = clients
        .iter()
        .filter(|(_, _, p)| *p == frozen_pid)
        .map(|(u, _, _)| u.clone())
        .collect();
    let live_uids: Vec<String> = clients
        .iter()
        .filter(|(_, _, p)| *p != frozen_pid)
        .map(|(u, _, _)| u.clone())
        .collect();
    assert_eq!((frozen_uids.len(), live_uids.len()), (2, 4));
    for u in [&frozen_uids[0], &live_uids[0]] {
        assert_eq!(
            cmd(
                &mut tc,
                &format!("{{\"cmd\":\"join\",\"uid\":\"{u}\",\"group\":\"g\"}}")
            ),
            "ok\n"
        );
    }
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"count"}"#),
        "{\"connections\":6,\"uids\":6}\n"
    );

    signal(frozen_pid, libc::SIGSTOP);
    let guard = Frozen(frozen_pid);
    let lines: Vec<String> = vec![
        r#"{"cmd":"count"}"#.into(),
        r#"{"cmd":"uids"}"#.into(),
        r#"{"cmd":"groups"}"#.into(),
        r#"{"cmd":"count","group":"g"}"#.into(),
        format!(r#"{{"cmd":"online","uid":"{}"}}"#, live_uids[1]),
        format!(r#"{{"cmd":"online","uid":"{}"}}"#, frozen_uids[1]),
        format!(
            r#"{{"cmd":"push","to":"{}","data":"lost"}}"#,
            frozen_uids[1]
        ),
        format!(r#"{{"cmd":"push","to":"{}","data":"live"}}"#, live_uids[1]),
    ];
    let started = Instant::now();
    let replies = pipelined(&mut tc, &lines, Duration::from_secs(4));
    let took = started.elapsed();
    let live_sorted: BTreeSet<&str> = live_uids.iter().map(String::as_str).collect();
    // One line each; the partial ones are JSON objects (compared as JSON: key order is free).
    assert!(
        replies
            .iter()
            .all(|r| r.ends_with('\n') && !r[..r.len() - 1].contains('\n')),
        "{replies:?}"
    );
    let parsed: Vec<Value> = replies[..4]
        .iter()
        .map(|r| serde_json::from_str(r).unwrap_or_else(|e| panic!("{r:?}: {e}")))
        .collect();
    assert_eq!(
        (parsed, &replies[4..]),
        (
            vec![
                json!({"connections":4,"uids":4,"partial":true}),
                json!({"uids":live_sorted,"partial":true}),
                json!({"groups":{"g":2},"partial":true}),
                json!({"connections":1,"uids":1,"partial":true}),
            ],
            &[
                "1\n".to_string(),
                "0\n".into(),
                "fail\n".into(),
                "ok\n".into()
            ][..]
        ),
        "text replies with worker {frozen_pid} frozen (took {took:?})"
    );
    eprintln!("8 pipelined text commands with a frozen worker answered in {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "partial answers took {took:?} (ipc_timeout 0.5 s)"
    );

    // HTTP, on the keep-alive connection whose worker runs.
    for (m, target, body, want) in [
        (
            "GET",
            "/api/uids".to_string(),
            None,
            json!({"uids": live_sorted, "count": 4, "connections": 4, "partial": true}),
        ),
        (
            "GET",
            format!("/api/online/{}", frozen_uids[0]),
            None,
            json!({"online": false, "connections": 0, "partial": true}),
        ),
        (
            "GET",
            "/api/groups".to_string(),
            None,
            json!({"groups": {"g": 2}, "partial": true}),
        ),
        (
            "POST",
            "/api/push".to_string(),
            Some(r#"{"all":true,"data":"partial push"}"#),
            json!({"delivered": 4, "partial": true}),
        ),
    ] {
        let t0 = Instant::now();
        hc.send(&request(m, &target, body, "", true)).expect("send");
        let r = hc.read_response(Duration::from_secs(4));
        let took = t0.elapsed();
        assert_eq!(
            (r.status, api.conform(m, &target, body, &r)),
            (200, want),
            "{m} {target} with a frozen worker"
        );
        assert!(took < Duration::from_secs(2), "{m} {target} took {took:?}");
    }
    hc.send(&request("GET", "/api/stats", None, "", true))
        .expect("send");
    let r = hc.read_response(Duration::from_secs(4));
    let stats = api.conform("GET", "/api/stats", None, &r);
    assert_eq!(stats["partial"], json!(true), "{stats}");
    assert_eq!(
        stats["workers"].as_array().map(Vec::len),
        Some(2),
        "{stats}"
    );
    drop(guard);

    // Resumed: whole answers again (the worker first works through its backlog).
    let mut last = String::new();
    let whole = wait_until(Duration::from_secs(5), || {
        last = cmd(&mut tc, r#"{"cmd":"count"}"#);
        !last.contains("partial")
    });
    assert!(whole, "answers stayed partial after SIGCONT: {last}");
    assert_eq!(last, "{\"connections\":6,\"uids\":6}\n");
    // A push carries its deadline: the resumed worker drops what came for it while it was
    // frozen (counted), so the `fail` above and the partial count were true. A broadcast after
    // the thaw marks the end of what each client gets.
    assert_eq!(cmd(&mut tc, r#"{"cmd":"all","data":"after"}"#), "ok\n");
    for (uid, c, pid) in clients.iter_mut() {
        let got = until_end_of(c, "after");
        if *uid == live_uids[1] {
            assert_eq!(got, [t("live"), t("partial push"), t("after")], "{uid}");
        } else if *pid == frozen_pid {
            assert_eq!(got, [t("after")], "{uid}: late pushes must be dropped");
        } else {
            assert_eq!(got, [t("partial push"), t("after")], "{uid} (worker {pid})");
        }
    }
    hc.send(&request("GET", "/api/stats", None, "", true))
        .expect("send");
    let r = hc.read_response(Duration::from_secs(4));
    let stats = api.conform("GET", "/api/stats", None, &r);
    assert!(
        stats["totals"]["late_dropped"].as_u64() >= Some(2),
        "the lost push and the broadcast were dropped late: {stats}"
    );
}

/// A push waits only for the workers that may hold its uid: with one worker frozen, pushes for
/// uids on the others (and for uids nobody holds) answer at once, in line order, instead of
/// each waiting `ipc_timeout` for the frozen one; a push for the frozen worker's uid answers
/// `fail` at the deadline, and the thawed worker drops it rather than deliver it late.
#[test]
fn a_frozen_worker_delays_only_the_pushes_for_its_uids() {
    let srv = start3(&["ipc_timeout=2"]);
    let pids = pids(&srv);
    let mut clients: Vec<(String, Ws, u32)> = Vec::new();
    for (w, mut conns) in placed(&srv, 1).into_iter().enumerate() {
        let mut c = conns.remove(0);
        let uid = format!("s{w}");
        login(&mut c, &uid);
        clients.push((uid, c, pids[w]));
    }
    let mut tc = text_conn(&srv);
    let entry = owner_of(&srv, &tc.stream);
    let frozen_pid = *pids.iter().find(|p| **p != entry).expect("another worker");
    let frozen_uid = clients
        .iter()
        .find(|(_, _, p)| *p == frozen_pid)
        .map(|(u, _, _)| u.clone())
        .expect("a client on the frozen worker");
    let live: Vec<String> = clients
        .iter()
        .filter(|(_, _, p)| *p != frozen_pid)
        .map(|(u, _, _)| u.clone())
        .collect();
    // Every login is known to the entry worker before the freeze (its siblings tell it within
    // a loop turn): each uid answers `ok`.
    for (uid, _, _) in &clients {
        let line = format!(r#"{{"uid":"{uid}","probe":1}}"#);
        assert!(
            wait_until(Duration::from_secs(5), || cmd(&mut tc, &line) == "ok\n"),
            "{uid} never answered ok"
        );
    }

    signal(frozen_pid, libc::SIGSTOP);
    let guard = Frozen(frozen_pid);
    let mut lines = Vec::new();
    for i in 0..100 {
        let to = if i % 2 == 0 {
            live[(i / 2) % live.len()].clone()
        } else {
            format!("nobody-{i}")
        };
        lines.push(format!(r#"{{"uid":"{to}","n":{i}}}"#));
    }
    let t0 = Instant::now();
    let replies = pipelined(&mut tc, &lines, Duration::from_secs(5));
    let took = t0.elapsed();
    let want: Vec<String> = (0..100)
        .map(|i| if i % 2 == 0 { "ok\n" } else { "fail\n" }.to_string())
        .collect();
    assert_eq!(replies, want);
    eprintln!("100 pushes with a worker frozen answered in {took:?} (ipc_timeout 2 s)");
    assert!(
        took < Duration::from_millis(1500),
        "pushes for live uids waited for the frozen worker: {took:?}"
    );
    // The frozen worker's own uid: `fail` once the deadline passed.
    let t0 = Instant::now();
    let lost = format!(r#"{{"uid":"{frozen_uid}","lost":true}}"#);
    assert_eq!(cmd(&mut tc, &lost), "fail\n");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    drop(guard);
    // Thawed: it drops the late push; the next broadcast is the first thing its client sees.
    assert_eq!(cmd(&mut tc, r#"{"cmd":"all","data":"after"}"#), "ok\n");
    for (uid, c, _) in clients.iter_mut() {
        let got = until_end_of(c, "after");
        assert!(
            !got.contains(&t(&lost)),
            "{uid} got the push answered fail: {got:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Push secret
// ---------------------------------------------------------------------------------------------

#[test]
fn push_secret_guards_text_port_and_api() {
    let mut api = Api::load();
    let srv = Server::builder()
        .workers(3)
        .login_reply()
        .set("push_secret=s3cret")
        .start();
    // Text port: the first line must authenticate, else `{"error":"unauthorized"}` and close.
    let mut tc = TextConn::connect(srv.text);
    tc.send(b"{\"cmd\":\"online\",\"uid\":\"a\"}\n");
    let (got, end) = tc.read_until_closed(REPLY);
    assert_eq!(
        (show(&got), end),
        (show(b"{\"error\":\"unauthorized\"}\n"), Eof::Fin)
    );
    let mut tc = TextConn::connect(srv.text);
    tc.send(b"{\"cmd\":\"auth\",\"secret\":\"wrong\"}\n{\"cmd\":\"count\"}\n");
    let (got, _) = tc.read_until_closed(REPLY);
    assert_eq!(show(&got), show(b"{\"error\":\"unauthorized\"}\n"));
    let mut tc = TextConn::connect(srv.text);
    assert_eq!(cmd(&mut tc, r#"{"cmd":"auth","secret":"s3cret"}"#), "ok\n");
    assert_eq!(
        cmd(&mut tc, r#"{"cmd":"count"}"#),
        "{\"connections\":0,\"uids\":0}\n"
    );

    // HTTP: with the bearer token the API answers.
    let (st, v) = api.call_with(
        &srv,
        "GET",
        "/api/uids",
        None,
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!((st, v), (200, json!({"uids":[],"count":0,"connections":0})));
    let resp = srv.http(&get("/?type=publish&to=a&content=x"));
    assert_eq!(resp.status, 401);
    api.conform("GET", "/", None, &resp);

    // Without it: 401, and (as every API error) a JSON `{"error":…}` body.
    let resp = srv.http(&request("GET", "/api/stats", None, "", false));
    assert_eq!(resp.status, 401, "{}", resp.text());
    let v = api.conform("GET", "/api/stats", None, &resp);
    assert_eq!(v, json!({"error":"unauthorized"}));
}

// ---------------------------------------------------------------------------------------------
// The PHP client class
// ---------------------------------------------------------------------------------------------

#[test]
fn php_client_class_against_three_workers() {
    if !require("php-cli", have_program("php")) {
        return;
    }
    let secret = "php-secret";
    let srv = Server::builder()
        .workers(3)
        .login_reply()
        .set(&format!("push_secret={secret}"))
        .set("auth_timeout=60")
        .start();
    wait_mesh_auth(&srv, secret);
    let mut by_worker = placed(&srv, 1);
    let mut clients: Vec<Ws> = Vec::new();
    for (w, uid) in ["php-a", "php-b", "php-c"].iter().enumerate() {
        let mut c = by_worker[w].pop().unwrap();
        login(&mut c, uid);
        clients.push(c);
    }
    let tcps: Vec<&TcpStream> = clients.iter().map(Ws::tcp).collect();
    assert_spread(&srv, &tcps);

    let out = run_with_limit(
        Command::new("php")
            .arg(script("scripts/php/herald_demo.php"))
            .arg("127.0.0.1")
            .arg(srv.text.to_string())
            .arg(secret),
        Duration::from_secs(10),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "herald_demo.php failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let want = "\
online php-a: true
online php-off: false
sendToUid php-a: true
sendToUid [php-a,php-b]: true
sendToUid php-off: false
push php-b: true
join php-a: true
join php-b: true
count php-g: {\"connections\":2,\"uids\":2}
uids php-g: [\"php-a\",\"php-b\"]
groups: {\"php-g\":2}
sendToGroup php-g exclude php-b: true
sendToGroup php-empty: false
sendToAll exclude php-a: true
sendToAll binary: true
leave php-b: true
count php-g: {\"connections\":1,\"uids\":1}
count: {\"connections\":3,\"uids\":3}
uids: [\"php-a\",\"php-b\",\"php-c\"]
partial: false
ungroup php-g: true
groups: {}
error: \"unknown cmd `nope`\"
error: \"`group` must be a non-empty string\"
online php-a after errors: true
online php-a after the server closed: true
reconnects: 1
kick php-c: true
kick php-off: false
done
";
    assert_eq!(stdout, want, "herald_demo.php output (stderr: {stderr})");

    // What the clients received.
    let bin = M::B(vec![0, 1, 2, 255]);
    let mut c_msgs = Vec::new();
    for _ in 0..4 {
        c_msgs.push(next(&mut clients[2]));
    }
    assert_eq!(c_msgs, [t("to all"), bin.clone(), t("bye"), M::Close(1000)]);
    let mut tc = TextConn::connect(srv.text);
    tc.send(format!("{{\"cmd\":\"auth\",\"secret\":\"{secret}\"}}\n").as_bytes());
    tc.stream.flush().ok();
    assert_eq!(tc.read_lines(1, REPLY), b"ok\n");
    assert_eq!(cmd(&mut tc, r#"{"cmd":"all","data":"end"}"#), "ok\n");
    assert_eq!(
        until_end(&mut clients[0]),
        [
            t("hello a"),
            t(r#"{"n":1}"#),
            t("to the group"),
            bin.clone(),
            t("end")
        ]
    );
    assert_eq!(
        until_end(&mut clients[1]),
        [
            t(r#"{"n":1}"#),
            t(r#"{"uid":"php-b","percent":"88%"}"#),
            t("to all"),
            bin.clone(),
            t("end")
        ]
    );
}

/// A `uids` answer of over 64 KB of uids is written by the worker's answer thread: it still
/// comes in its place among pipelined replies, sorted, each uid once, on the text port and the
/// API, and the pushes after it are answered too.
#[test]
fn big_uid_lists_are_answered_in_order_on_every_surface() {
    let server = Server::builder().workers(2).login_reply().start();
    server.wait_mesh();
    // 300 uids of 240 bytes: 72 KB of lists; one uid twice (on two connections).
    let uid = |i: usize| format!("{i:03}{}", "x".repeat(237));
    let mut clients: Vec<_> = (0..300).map(|i| server.login_acked(&uid(i))).collect();
    clients.push(server.login_acked(&uid(7)));
    let lines =
        "{\"cmd\":\"uids\"}\n{\"cmd\":\"count\"}\n{\"uid\":\"nobody\"}\n{\"cmd\":\"uids\"}\n";
    let reply = String::from_utf8(server.text_push(lines.as_bytes())).expect("utf-8");
    let got: Vec<&str> = reply.lines().collect();
    assert_eq!(got.len(), 4, "{}", show(reply.as_bytes()));
    let want: Vec<String> = (0..300).map(uid).collect();
    let list: Vec<String> = serde_json::from_str(got[0]).expect("a JSON list");
    assert_eq!(list, want);
    assert_eq!(got[1], r#"{"connections":301,"uids":300}"#);
    assert_eq!(got[2], "fail");
    assert_eq!(got[3], got[0]);
    let r = server.http(&get("/api/uids"));
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["count"], 300);
    assert_eq!(v["connections"], 301);
    assert_eq!(v["uids"].as_array().map(Vec::len), Some(300));
    assert_eq!(v["uids"][299], uid(299));
    clients.clear();
}
