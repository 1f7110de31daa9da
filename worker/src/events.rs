//! Events from clients, without sockets: their names and bits, how a connection is named to a
//! backend, the JSON of each event, the text port's event commands (`subscribe`, `reply`,
//! `ack`), the answer a webhook may give, the per-connection rate window, and which subscriber
//! gets a uid's events.
//!
//! Five events exist. `login`, `message` and `logout` concern one connection and go to one
//! subscriber, the same for a uid as long as the subscribers stay the same (so a uid's
//! messages are handled in order); `online` and `offline` concern a uid over the whole server
//! and go to every subscriber that wants them. The webhook gets whichever of them
//! `webhook_events` names.

use crate::proto::push::{self, PushRequest};
use base64::Engine;
use serde_json::{json, Map, Value};
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;

/// A connection logged in.
pub const LOGIN: u8 = 1;
/// A logged-in connection sent a message.
pub const MESSAGE: u8 = 2;
/// A logged-in connection ended.
pub const LOGOUT: u8 = 4;
/// A uid got its first connection on the server.
pub const ONLINE: u8 = 8;
/// A uid lost its last connection on the server.
pub const OFFLINE: u8 = 16;
/// The events that go to one subscriber, chosen by uid.
pub const PER_UID: u8 = LOGIN | MESSAGE | LOGOUT;
/// Every event.
pub const ALL: u8 = LOGIN | MESSAGE | LOGOUT | ONLINE | OFFLINE;

/// The bit of event `name`.
pub fn bit_of(name: &str) -> Option<u8> {
    Some(match name {
        "login" => LOGIN,
        "message" => MESSAGE,
        "logout" => LOGOUT,
        "online" => ONLINE,
        "offline" => OFFLINE,
        _ => return None,
    })
}

/// The bits of a list of event names; the error names the first unknown one.
pub fn mask_of<S: AsRef<str>>(names: &[S]) -> Result<u8, String> {
    names.iter().try_fold(0u8, |m, n| {
        bit_of(n.as_ref())
            .map(|b| m | b)
            .ok_or_else(|| format!("unknown event `{}`", n.as_ref()))
    })
}

/// Which of `n` subscribers gets the events of `uid`: the same one in every worker, for the
/// same list.
pub fn pick(uid: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let h = foldhash::fast::FixedState::with_seed(0x4576_656e_7473).hash_one(uid.as_bytes());
    (h % n as u64) as usize
}

/// Which of `subscribers` (each a worker pid and a subscriber id) gets the events of `uid`:
/// the one with the highest hash of (uid, subscriber), the same in every worker for the same
/// list. When a subscriber comes or goes, only the uids it wins or held move (rendezvous
/// hashing), so the others stay with the backend that had them.
pub fn choose(uid: &str, subscribers: &[(u32, u64)]) -> usize {
    let state = foldhash::fast::FixedState::with_seed(0x5374_6963_6b79);
    let mut best = (0u64, 0usize);
    for (i, (pid, id)) in subscribers.iter().enumerate() {
        let h = state.hash_one((uid.as_bytes(), *pid, *id));
        if i == 0 || h > best.0 {
            best = (h, i);
        }
    }
    best.1
}

/// A client connection as events name it (`conn`): the worker process holding it, and the
/// connection there. Backends hand it back to reply to that connection or answer its acks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnRef {
    /// A plain WebSocket: `PID.SLOT.ID`.
    Ws {
        /// The worker's pid.
        pid: u32,
        /// Its slot in the worker's connection table.
        slot: usize,
        /// Its connection id (a slot is reused, an id is not).
        id: u64,
    },
    /// A Socket.IO session: `PID.s.SID`.
    Session {
        /// The worker's pid.
        pid: u32,
        /// The Engine.IO session id.
        sid: String,
    },
}

impl ConnRef {
    /// Reads a `conn` string (`NODE/` first in a cluster: see [`conn_node`]); `None` if it
    /// is not one.
    pub fn parse(s: &str) -> Option<ConnRef> {
        let s = s.rsplit_once('/').map_or(s, |(_, rest)| rest);
        let mut it = s.splitn(3, '.');
        let pid = it.next()?.parse().ok()?;
        let second = it.next()?;
        let third = it.next()?;
        if second == "s" {
            return (!third.is_empty()).then(|| ConnRef::Session {
                pid,
                sid: third.to_string(),
            });
        }
        Some(ConnRef::Ws {
            pid,
            slot: second.parse().ok()?,
            id: third.parse().ok()?,
        })
    }

    /// The worker process holding it.
    pub fn pid(&self) -> u32 {
        match self {
            ConnRef::Ws { pid, .. } | ConnRef::Session { pid, .. } => *pid,
        }
    }
}

/// The node a `conn` string names (in a cluster its events write `NODE/PID.…`, so that a
/// reply entering another node is sent on to the one holding the client).
pub fn conn_node(s: &str) -> Option<&str> {
    s.rsplit_once('/')
        .map(|(node, _)| node)
        .filter(|n| !n.is_empty())
}

impl fmt::Display for ConnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnRef::Ws { pid, slot, id } => write!(f, "{pid}.{slot}.{id}"),
            ConnRef::Session { pid, sid } => write!(f, "{pid}.s.{sid}"),
        }
    }
}

/// What every event of one connection says: who and where.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The event's id (unique: the receiver de-duplicates retried webhooks with it).
    pub id: &'a str,
    /// The uid.
    pub uid: &'a str,
    /// The connection (`ConnRef` as a string).
    pub conn: &'a str,
    /// The worker id holding it.
    pub worker: u32,
    /// When (milliseconds since the Unix epoch).
    pub time_ms: u64,
}

impl Origin<'_> {
    fn object(&self, event: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), Value::from(self.id));
        m.insert("event".into(), Value::from(event));
        m.insert("uid".into(), Value::from(self.uid));
        m.insert("conn".into(), Value::from(self.conn));
        m.insert("worker".into(), Value::from(self.worker));
        m.insert("time".into(), Value::from(self.time_ms));
        m
    }
}

/// The `login` event.
pub fn login(o: &Origin<'_>, remote: Option<SocketAddr>, protocol: &str, query: &str) -> String {
    let mut m = o.object("login");
    m.insert(
        "remote".into(),
        remote.map_or(Value::Null, |r| Value::from(r.to_string())),
    );
    m.insert("protocol".into(), Value::from(protocol));
    m.insert("query".into(), Value::from(query));
    Value::Object(m).to_string()
}

/// What a client sent.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// A WebSocket text message.
    Text(&'a str),
    /// A WebSocket binary message (base64 in the event, with `"binary":true`).
    Binary(&'a [u8]),
    /// A Socket.IO event other than `login`: its name, arguments, and ack id if the client
    /// waits for an acknowledgement.
    Sio {
        /// The event name.
        name: &'a str,
        /// Its arguments.
        args: &'a [Value],
        /// The ack id.
        ack: Option<u64>,
    },
}

/// The `message` event.
pub fn message(o: &Origin<'_>, body: Body<'_>) -> String {
    let mut m = o.object("message");
    match body {
        Body::Text(t) => {
            m.insert("data".into(), Value::from(t));
        }
        Body::Binary(b) => {
            m.insert(
                "data".into(),
                Value::from(base64::engine::general_purpose::STANDARD.encode(b)),
            );
            m.insert("binary".into(), Value::Bool(true));
        }
        Body::Sio { name, args, ack } => {
            m.insert("name".into(), Value::from(name));
            m.insert("args".into(), Value::Array(args.to_vec()));
            if let Some(a) = ack {
                m.insert("ack".into(), Value::from(a));
            }
        }
    }
    Value::Object(m).to_string()
}

/// The `logout` event: the close code (none for a Socket.IO session), why, and how long the
/// client was logged in (seconds).
pub fn logout(o: &Origin<'_>, code: Option<u16>, reason: &str, duration: f64) -> String {
    let mut m = o.object("logout");
    m.insert("code".into(), code.map_or(Value::Null, Value::from));
    m.insert("reason".into(), Value::from(reason));
    m.insert(
        "duration".into(),
        Value::from((duration * 1000.0).round() / 1000.0),
    );
    Value::Object(m).to_string()
}

/// The `online` (or `offline`) event of a uid.
pub fn presence(id: &str, online: bool, uid: &str, worker: u32, time_ms: u64) -> String {
    json!({
        "id": id,
        "event": if online { "online" } else { "offline" },
        "uid": uid,
        "worker": worker,
        "time": time_ms,
    })
    .to_string()
}

/// A text-port command about events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpCmd {
    /// `{"cmd":"subscribe","events":[…]}`: this connection becomes an event stream.
    Subscribe(u8),
    /// `{"cmd":"unsubscribe"}`.
    Unsubscribe,
    /// `{"cmd":"reply","conn":…,"data":…}`: a message to one connection.
    Reply {
        /// The connection.
        conn: ConnRef,
        /// Its node, when the `conn` string names one (a cluster's).
        node: Option<String>,
        /// The frame's body.
        payload: Vec<u8>,
        /// A binary frame (`data` in base64).
        binary: bool,
    },
    /// `{"cmd":"ack","conn":…,"ack":N,"data":[…]}`: calls a Socket.IO client's ack.
    Ack {
        /// The connection (a Socket.IO session).
        conn: ConnRef,
        /// Its node, when the `conn` string names one (a cluster's).
        node: Option<String>,
        /// The ack id from the `message` event.
        ack: u64,
        /// The ack's arguments, as a JSON array.
        args: Vec<u8>,
    },
}

/// Whether `cmd` is one of the event commands.
pub fn is_up_cmd(cmd: &str) -> bool {
    matches!(cmd, "subscribe" | "unsubscribe" | "reply" | "ack")
}

/// Reads the event command `cmd` of a text-port line.
pub fn parse_cmd(cmd: &str, obj: &Map<String, Value>) -> Result<UpCmd, String> {
    let conn = || -> Result<(ConnRef, Option<String>), String> {
        match obj.get("conn") {
            Some(Value::String(s)) => ConnRef::parse(s)
                .map(|c| (c, conn_node(s).map(String::from)))
                .ok_or_else(|| format!("`conn` `{s}` names no connection")),
            Some(_) => Err("`conn` must be a string".into()),
            None => Err("missing `conn`".into()),
        }
    };
    match cmd {
        "subscribe" => {
            let mask = match obj.get("events") {
                None | Some(Value::Null) => ALL,
                Some(Value::Array(a)) => {
                    let names: Result<Vec<&str>, String> = a
                        .iter()
                        .map(|v| v.as_str().ok_or_else(|| "`events` holds strings".into()))
                        .collect();
                    mask_of(&names?)?
                }
                Some(_) => return Err("`events` must be an array of event names".into()),
            };
            if mask == 0 {
                return Err("`events` names no event".into());
            }
            Ok(UpCmd::Subscribe(mask))
        }
        "unsubscribe" => Ok(UpCmd::Unsubscribe),
        "reply" => {
            let (conn, node) = conn()?;
            let (payload, binary) = reply_payload(obj.get("data"), obj.get("binary"))?;
            Ok(UpCmd::Reply {
                conn,
                node,
                payload,
                binary,
            })
        }
        "ack" => {
            let (conn, node) = conn()?;
            let ack = obj
                .get("ack")
                .and_then(Value::as_u64)
                .ok_or("`ack` must be the event's ack id (a number)")?;
            Ok(UpCmd::Ack {
                conn,
                node,
                ack,
                args: ack_args(obj.get("data")),
            })
        }
        other => Err(format!("unknown cmd `{other}`")),
    }
}

/// A reply's frame body: `data` as a push's (a JSON string as is, else its JSON text), or
/// base64 with `binary`.
fn reply_payload(data: Option<&Value>, binary: Option<&Value>) -> Result<(Vec<u8>, bool), String> {
    let data = data.ok_or("missing `data`")?;
    if binary.and_then(Value::as_bool).unwrap_or(false) {
        let b64 = data
            .as_str()
            .ok_or("binary `data` must be a base64 string")?;
        let b = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "binary `data` is not valid base64".to_string())?;
        return Ok((b, true));
    }
    Ok((push::data_bytes(data), false))
}

/// An ack's arguments as a JSON array: an array as is, nothing as `[]`, one value as `[v]`.
fn ack_args(data: Option<&Value>) -> Vec<u8> {
    match data {
        None | Some(Value::Null) => b"[]".to_vec(),
        Some(a @ Value::Array(_)) => a.to_string().into_bytes(),
        Some(v) => Value::Array(vec![v.clone()]).to_string().into_bytes(),
    }
}

/// What a backend answered to one `message` (a webhook's answer for that event).
#[derive(Debug, Default)]
pub struct Answer {
    /// A message to the sender: its bytes and whether it is binary.
    pub reply: Option<(Vec<u8>, bool)>,
    /// The sender's Socket.IO ack arguments (a JSON array).
    pub ack: Option<Vec<u8>>,
    /// Pushes to others, in the JSON API's form.
    pub pushes: Vec<PushRequest>,
}

/// Reads one event's answer: `{"reply":…, "binary":…, "ack":[…], "push":{…} or [{…},…]}`.
/// What cannot be read is left out and named in the returned errors.
pub fn answer(v: &Value, max_targets: usize) -> (Answer, Vec<String>) {
    let mut a = Answer::default();
    let mut errors = Vec::new();
    let Some(obj) = v.as_object() else {
        return (a, vec!["an answer must be a JSON object".into()]);
    };
    if let Some(r) = obj.get("reply").filter(|r| !r.is_null()) {
        match reply_payload(Some(r), obj.get("binary")) {
            Ok(p) => a.reply = Some(p),
            Err(e) => errors.push(e),
        }
    }
    if obj.contains_key("ack") {
        a.ack = Some(ack_args(obj.get("ack")));
    }
    let pushes: Vec<&Value> = match obj.get("push") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(l)) => l.iter().collect(),
        Some(p) => vec![p],
    };
    for p in pushes {
        match p.as_object() {
            Some(o) => match push::parse_api(o, max_targets) {
                Ok(req) => a.pushes.push(req),
                Err(e) => errors.push(e),
            },
            None => errors.push("a push must be a JSON object".into()),
        }
    }
    (a, errors)
}

/// A connection's messages in the current second, for `max_upstream_rate`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rate {
    /// The second counted (worker clock seconds).
    second: u32,
    /// Messages in it.
    count: u32,
}

impl Rate {
    /// Counts one message at `second`; whether it is within `max` per second.
    pub fn allow(&mut self, second: u32, max: u32) -> bool {
        if second != self.second {
            self.second = second;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_masks() {
        assert_eq!(mask_of(&["message", "logout"]), Ok(MESSAGE | LOGOUT));
        assert_eq!(mask_of::<&str>(&[]), Ok(0));
        assert!(mask_of(&["nope"]).unwrap_err().contains("nope"));
        for n in herald_ipc::config::EVENT_NAMES {
            assert!(bit_of(n).is_some(), "{n}");
        }
    }

    #[test]
    fn conn_refs_round_trip() {
        for c in [
            ConnRef::Ws {
                pid: 42,
                slot: 7,
                id: 99,
            },
            ConnRef::Session {
                pid: 42,
                sid: "abc-_DEF".into(),
            },
        ] {
            assert_eq!(ConnRef::parse(&c.to_string()), Some(c));
        }
        for bad in ["", "1", "1.2", "x.1.2", "1.s.", "1.a.2"] {
            assert_eq!(ConnRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn events_are_json() {
        let o = Origin {
            id: "e1",
            uid: "u1",
            conn: "1.2.3",
            worker: 0,
            time_ms: 5,
        };
        let v: Value = serde_json::from_str(&message(&o, Body::Text("hi"))).unwrap();
        assert_eq!(v["event"], "message");
        assert_eq!(v["data"], "hi");
        let v: Value = serde_json::from_str(&message(&o, Body::Binary(&[0, 255]))).unwrap();
        assert_eq!(v["data"], "AP8=");
        assert_eq!(v["binary"], true);
        let args = [json!({"a": 1})];
        let v: Value = serde_json::from_str(&message(
            &o,
            Body::Sio {
                name: "chat",
                args: &args,
                ack: Some(3),
            },
        ))
        .unwrap();
        assert_eq!(v["name"], "chat");
        assert_eq!(v["args"][0]["a"], 1);
        assert_eq!(v["ack"], 3);
        let v: Value = serde_json::from_str(&logout(&o, Some(1000), "bye", 1.23456)).unwrap();
        assert_eq!(v["code"], 1000);
        assert_eq!(v["duration"], 1.235);
        let v: Value = serde_json::from_str(&login(&o, None, "websocket", "a=1")).unwrap();
        assert_eq!(v["query"], "a=1");
        let v: Value = serde_json::from_str(&presence("e2", false, "u1", 1, 9)).unwrap();
        assert_eq!(v["event"], "offline");
    }

    #[test]
    fn commands() {
        let obj = |s: &str| -> Map<String, Value> { serde_json::from_str(s).unwrap() };
        assert_eq!(
            parse_cmd("subscribe", &obj(r#"{"events":["message"]}"#)),
            Ok(UpCmd::Subscribe(MESSAGE))
        );
        assert_eq!(
            parse_cmd("subscribe", &obj("{}")),
            Ok(UpCmd::Subscribe(ALL))
        );
        assert!(parse_cmd("subscribe", &obj(r#"{"events":[]}"#)).is_err());
        assert!(parse_cmd("subscribe", &obj(r#"{"events":["x"]}"#)).is_err());
        assert_eq!(
            parse_cmd("reply", &obj(r#"{"conn":"1.2.3","data":{"a":1}}"#)),
            Ok(UpCmd::Reply {
                conn: ConnRef::Ws {
                    pid: 1,
                    slot: 2,
                    id: 3
                },
                node: None,
                payload: br#"{"a":1}"#.to_vec(),
                binary: false
            })
        );
        assert_eq!(
            parse_cmd("ack", &obj(r#"{"conn":"web-2/1.s.x","ack":4,"data":"ok"}"#)),
            Ok(UpCmd::Ack {
                conn: ConnRef::Session {
                    pid: 1,
                    sid: "x".into()
                },
                node: Some("web-2".into()),
                ack: 4,
                args: br#"["ok"]"#.to_vec()
            })
        );
        assert!(parse_cmd("ack", &obj(r#"{"conn":"1.s.x"}"#)).is_err());
        assert!(parse_cmd("reply", &obj(r#"{"conn":"zz","data":1}"#)).is_err());
    }

    #[test]
    fn answers() {
        let (a, e) = answer(
            &json!({"reply": "hi", "ack": [1, 2], "push": [{"to": "u2", "data": "x"}, {"bad": 1}]}),
            10,
        );
        assert_eq!(a.reply, Some((b"hi".to_vec(), false)));
        assert_eq!(a.ack.as_deref(), Some(&b"[1,2]"[..]));
        assert_eq!(a.pushes.len(), 1);
        assert_eq!(e.len(), 1);
        let (a, e) = answer(&json!({"push": {"all": true, "data": {"n": 1}}}), 10);
        assert_eq!(a.pushes[0].payload, br#"{"n":1}"#);
        assert!(e.is_empty() && a.reply.is_none() && a.ack.is_none());
    }

    #[test]
    fn rate_window() {
        let mut r = Rate::default();
        assert!(r.allow(1, 2));
        assert!(r.allow(1, 2));
        assert!(!r.allow(1, 2));
        assert!(r.allow(2, 2));
    }

    #[test]
    fn choose_moves_few_uids_when_a_subscriber_comes() {
        let three = [(1, 10), (1, 11), (2, 7)];
        let four = [(1, 10), (1, 11), (2, 7), (2, 9)];
        let mut seen = [0; 3];
        let mut moved = 0;
        for i in 0..1000 {
            let uid = format!("u{i}");
            let a = choose(&uid, &three);
            seen[a] += 1;
            let b = choose(&uid, &four);
            if b != a {
                // Only to the new subscriber.
                assert_eq!(b, 3);
                moved += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 250), "{seen:?}");
        assert!((150..350).contains(&moved), "{moved} moved");
        assert_eq!(choose("x", &[]), 0);
    }

    #[test]
    fn pick_is_stable_and_spread() {
        assert_eq!(pick("u1", 1), 0);
        assert_eq!(pick("u1", 3), pick("u1", 3));
        let mut seen = [0; 3];
        for i in 0..300 {
            seen[pick(&format!("u{i}"), 3)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
