//! Events from clients on the text port: backends that `subscribe` get `login`, `message`,
//! `logout`, `online` and `offline` as JSON lines, answer with `reply`, `ack` and pushes, and
//! are bounded like any slow consumer; clients are held to `max_upstream_rate`.
//!
//! The chat runs through the real `php` consumer (`scripts/php/subscriber.php`) between a
//! plain WebSocket and the real socket.io-client under Node (`scripts/node/sio-chat.js`), with
//! two workers and the two clients in different ones. Without php or node (and CI unset) those
//! tests print a skip note.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(15);

/// A process whose stdout lines arrive on a channel; killed (with its group) on drop.
struct Lines {
    _group: Group,
    rx: mpsc::Receiver<String>,
    name: String,
}

impl Lines {
    fn spawn(name: &str, cmd: &mut Command) -> Lines {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut group = Group::spawn(cmd).expect("spawn");
        let out = group.child.stdout.take().expect("stdout");
        Lines {
            _group: group,
            rx: reader(out),
            name: name.into(),
        }
    }

    /// The next line satisfying `f`; panics at the deadline.
    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&str) -> bool) -> String {
        wait_line(&self.rx, &self.name, what, limit, &mut f)
    }
}

fn reader(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    name: &str,
    what: &str,
    limit: Duration,
    f: &mut dyn FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if f(&l) => return l,
            Ok(_) => {}
            Err(_) => panic!("{name}: no {what} within {limit:?}"),
        }
    }
}

/// A subscriber on the text port, in Rust: its event lines on a channel.
struct Sub {
    stream: TcpStream,
    rx: mpsc::Receiver<String>,
}

impl Sub {
    fn connect(srv: &Server, events: &str) -> Sub {
        let mut stream = TcpStream::connect(("127.0.0.1", srv.text)).expect("connect");
        stream
            .write_all(format!("{{\"cmd\":\"subscribe\",\"events\":{events}}}\n").as_bytes())
            .expect("subscribe");
        let rx = reader(stream.try_clone().expect("clone"));
        let first = rx.recv_timeout(REPLY).expect("subscribe answer");
        assert_eq!(first, "ok", "subscribe");
        Sub { stream, rx }
    }

    /// The next event (a JSON line with `event`) satisfying `f`.
    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&Value) -> bool) -> Value {
        let line = wait_line(&self.rx, "subscriber", what, limit, &mut |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("event").is_some() && f(&v))
        });
        serde_json::from_str(&line).expect("json")
    }

    /// Every event that arrives within `window`.
    fn drain(&self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(l) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v.get("event").is_some() {
                    out.push(v);
                }
            }
        }
        out
    }
}

/// Sum of a figure over the workers, from `GET /api/stats`.
fn stat(srv: &Server, key: &str) -> u64 {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let v: Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|r| r[key].as_u64()).sum())
        .unwrap_or(0)
}

/// Logs probe uids in until `subs` have each seen an `online` decided by every worker: then
/// every worker knows every subscriber (the owner of a uid sends its `online` to all).
fn wait_subscribers_known(srv: &Server, subs: &[&Sub]) {
    let mut seen: Vec<HashSet<u64>> = vec![HashSet::new(); subs.len()];
    let deadline = Instant::now() + LONG;
    let mut probes = Vec::new();
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "subscribers not known everywhere"
        );
        let uid = format!("probe{i}");
        probes.push(srv.login_acked(&uid));
        for (k, s) in subs.iter().enumerate() {
            let v = s.wait("probe online", LONG, |v| {
                v["event"] == "online" && v["uid"] == uid
            });
            seen[k].insert(v["worker"].as_u64().unwrap_or(99));
        }
        if seen.iter().all(|w| w.len() >= srv.workers) {
            break;
        }
    }
    for p in probes {
        p.close();
    }
}

fn php_ready() -> bool {
    require("php (Debian package php-cli)", have_program("php"))
}

fn node_ready() -> bool {
    require("node (Debian package nodejs)", have_program("node"))
        && require(
            "socket.io-client packages (npm ci in scripts/node)",
            workspace_root()
                .join("scripts/node/node_modules/socket.io-client-v4/package.json")
                .exists(),
        )
}

/// A socket.io-client 4 chat client under Node, logged in as `uid`.
struct SioChat {
    lines: Lines,
    stdin: std::process::ChildStdin,
}

impl SioChat {
    fn start(port: u16, uid: &str) -> SioChat {
        let mut cmd = Command::new("node");
        cmd.arg(workspace_root().join("scripts/node/sio-chat.js"))
            .args(["v4", &format!("http://127.0.0.1:{port}"), uid])
            .stdin(Stdio::piped());
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut group = Group::spawn(&mut cmd).expect("spawn node");
        let stdin = group.child.stdin.take().expect("stdin");
        let out = group.child.stdout.take().expect("stdout");
        let lines = Lines {
            _group: group,
            rx: reader(out),
            name: format!("sio-chat {uid}"),
        };
        lines.wait("logged_in", LONG, |l| l == "logged_in");
        SioChat { lines, stdin }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("node stdin");
        self.stdin.flush().ok();
    }
}

/// Logs in `uid` on the WebSocket port until its `login` event names a worker other than
/// `not` (the kernel spreads connections; a few tries suffice).
fn login_elsewhere(srv: &Server, sub: &Lines, uid: &str, not: u64) -> Ws {
    for _ in 0..40 {
        let c = srv.login_acked(uid);
        let l = sub.wait("login", LONG, |l| {
            l.contains("\"event\":\"login\"") && l.contains(&format!("\"uid\":\"{uid}\""))
        });
        let v: Value = serde_json::from_str(&l).expect("json");
        if v["worker"].as_u64() != Some(not) {
            return c;
        }
        c.close();
    }
    panic!("{uid} never landed outside worker {not}");
}

#[test]
fn php_subscriber_runs_a_chat_between_websocket_and_socketio_across_two_workers() {
    if !php_ready() || !node_ready() {
        return;
    }
    let srv = Server::builder()
        .workers(2)
        .socketio()
        .login_reply()
        .set("events=true")
        .start();
    srv.wait_mesh();
    // A Rust subscriber for presence only, to know when every worker knows the subscribers.
    let watch = Sub::connect(&srv, r#"["online","offline"]"#);
    let php = Lines::spawn(
        "subscriber.php",
        Command::new("php").args([
            workspace_root()
                .join("scripts/php/subscriber.php")
                .to_str()
                .expect("path"),
            "127.0.0.1",
            &srv.text.to_string(),
        ]),
    );
    php.wait("subscribed", LONG, |l| l == "subscribed");
    wait_subscribers_known(&srv, &[&watch]);

    let mut alice_sio = SioChat::start(srv.socketio, "bob");
    let bob_login = php.wait("bob's login", LONG, |l| {
        l.contains("\"event\":\"login\"") && l.contains("\"uid\":\"bob\"")
    });
    let bob: Value = serde_json::from_str(&bob_login).expect("json");
    assert_eq!(bob["protocol"], "socketio");
    assert!(
        bob["query"].as_str().unwrap_or("").contains("EIO=4"),
        "{bob}"
    );
    let bob_worker = bob["worker"].as_u64().expect("worker");
    let mut alice = login_elsewhere(&srv, &php, "alice", bob_worker);
    watch.wait("alice online", LONG, |v| {
        v["event"] == "online" && v["uid"] == "alice"
    });

    // WebSocket → PHP → Socket.IO, and the sender's reply.
    alice.send_text(r#"{"to":"bob","text":"hello bob"}"#);
    alice_sio
        .lines
        .wait("bob's new_msg", LONG, |l| l == "new_msg alice: hello bob");
    assert_eq!(alice.recv_text(LONG), "sent");
    let m = php.wait("alice's message", LONG, |l| {
        l.contains("\"event\":\"message\"")
    });
    let m: Value = serde_json::from_str(&m).expect("json");
    assert_eq!(m["uid"], "alice");
    assert_eq!(m["data"], r#"{"to":"bob","text":"hello bob"}"#);

    // Socket.IO → PHP → WebSocket, and the client's ack called with the backend's answer.
    alice_sio.say("chat alice hi alice");
    assert_eq!(alice.recv_text(LONG), "bob: hi alice");
    alice_sio
        .lines
        .wait("ack", LONG, |l| l == r#"ack ["sent"]"#);
    let m = php.wait("bob's message", LONG, |l| {
        l.contains("\"event\":\"message\"") && l.contains("\"uid\":\"bob\"")
    });
    let m: Value = serde_json::from_str(&m).expect("json");
    assert_eq!(m["name"], "chat");
    assert_eq!(m["args"][0]["text"], "hi alice");
    assert!(m["ack"].is_u64(), "{m}");

    // Logout with the close code, then offline for the whole server.
    alice.close();
    let l = php.wait("alice's logout", LONG, |l| {
        l.contains("\"event\":\"logout\"") && l.contains("\"uid\":\"alice\"")
    });
    let v: Value = serde_json::from_str(&l).expect("json");
    assert_eq!(v["code"], 1000);
    assert!(v["duration"].as_f64().is_some(), "{v}");
    watch.wait("alice offline", LONG, |v| {
        v["event"] == "offline" && v["uid"] == "alice"
    });
    assert!(stat(&srv, "events") > 0);
}

#[test]
fn messages_go_to_one_subscriber_per_uid_in_order_and_presence_to_all() {
    let srv = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .set("client_relay=true")
        .start();
    srv.wait_mesh();
    let subs: Vec<Sub> = (0..3)
        .map(|_| Sub::connect(&srv, r#"["login","message","online","offline"]"#))
        .collect();
    let refs: Vec<&Sub> = subs.iter().collect();
    wait_subscribers_known(&srv, &refs);
    // Drop what the probes left.
    for s in &subs {
        s.drain(Duration::from_millis(300));
    }
    let mut clients = Vec::new();
    for u in 0..12 {
        let uid = format!("user{u}");
        // Two connections per uid: they may land in different workers.
        for _ in 0..2 {
            let mut c = srv.login_acked(&uid);
            for m in 0..5 {
                c.send_text(&format!("{uid} m{m}"));
            }
            clients.push(c);
        }
    }
    let mut rx = srv.login_acked("rx");
    clients[0].send_text("rx:relayed");
    assert_eq!(rx.recv_text(LONG), "relayed");

    // 12 uids × 2 connections × 5 messages, plus the relay; each to exactly one subscriber.
    let want = 12 * 2 * 5 + 1;
    let mut per_sub: Vec<Vec<Value>> = vec![Vec::new(); subs.len()];
    let deadline = Instant::now() + LONG;
    while per_sub
        .iter()
        .flatten()
        .filter(|v| v["event"] == "message")
        .count()
        < want
    {
        assert!(Instant::now() < deadline, "messages missing");
        for (k, s) in subs.iter().enumerate() {
            per_sub[k].extend(s.drain(Duration::from_millis(50)));
        }
    }
    for (k, s) in subs.iter().enumerate() {
        per_sub[k].extend(s.drain(Duration::from_millis(300)));
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    for (k, evs) in per_sub.iter().enumerate() {
        for v in evs
            .iter()
            .filter(|v| v["event"] != "online" && v["event"] != "offline")
        {
            let uid = v["uid"].as_str().expect("uid").to_string();
            if uid.starts_with("probe") {
                continue;
            }
            // login and message of a uid: one subscriber.
            assert_eq!(*owner.entry(uid.clone()).or_insert(k), k, "{uid} split");
            if v["event"] == "message" && v["data"] != "rx:relayed" {
                let key = (v["conn"].to_string(), v["data"].to_string());
                assert!(seen.insert(key), "delivered twice: {v}");
                order
                    .entry(v["conn"].to_string())
                    .or_default()
                    .push(v["data"].as_str().unwrap_or("").to_string());
            }
        }
    }
    assert_eq!(seen.len(), want - 1);
    let relayed: Vec<&Value> = per_sub
        .iter()
        .flatten()
        .filter(|v| v["data"] == "rx:relayed")
        .collect();
    assert_eq!(relayed.len(), 1, "the relayed message is an event too");
    for (conn, msgs) in order {
        let mut sorted = msgs.clone();
        sorted.sort();
        assert_eq!(msgs, sorted, "messages of {conn} out of order");
    }
    // Balanced: with 12 uids every subscriber has some.
    let used: HashSet<usize> = owner.values().copied().collect();
    assert!(used.len() >= 2, "all uids on one subscriber: {owner:?}");
    // Presence to all: every subscriber saw every uid come online once.
    for evs in &per_sub {
        let online: Vec<&str> = evs
            .iter()
            .filter(|v| v["event"] == "online")
            .filter_map(|v| v["uid"].as_str())
            .filter(|u| u.starts_with("user"))
            .collect();
        assert_eq!(online.len(), 12, "{online:?}");
    }
    // Offline once per uid, when its last connection (of two, maybe in two workers) is gone.
    for pair in clients.chunks_mut(2) {
        let [first, _] = pair else { continue };
        let c = std::mem::replace(first, srv.login_acked("filler"));
        c.close();
    }
    for s in &subs {
        let early: Vec<Value> = s
            .drain(Duration::from_millis(500))
            .into_iter()
            .filter(|v| {
                v["event"] == "offline" && v["uid"].as_str().is_some_and(|u| u.starts_with("user"))
            })
            .collect();
        assert!(
            early.is_empty(),
            "offline with a connection left: {early:?}"
        );
    }
    let mut left = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 1 {
            c.close();
        } else {
            left.push(c);
        }
    }
    for s in &subs {
        let mut offline = HashSet::new();
        let deadline = Instant::now() + LONG;
        while offline.len() < 12 {
            assert!(Instant::now() < deadline, "offline missing: {offline:?}");
            for v in s.drain(Duration::from_millis(100)) {
                if v["event"] == "offline" {
                    if let Some(u) = v["uid"].as_str().filter(|u| u.starts_with("user")) {
                        assert!(offline.insert(u.to_string()), "offline twice for {u}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_flooding_client_is_held_to_max_upstream_rate() {
    let srv = Server::builder()
        .login_reply()
        .set("events=true")
        .set("max_upstream_rate=20")
        .start();
    let sub = Sub::connect(&srv, r#"["message"]"#);
    let mut c = srv.login_acked("flood");
    for i in 0..300 {
        c.send_text(&format!("m{i}"));
    }
    c.roundtrip();
    let got = sub.drain(Duration::from_millis(800));
    // One second's window, or two if the burst straddled a boundary.
    assert!(
        (20..=40).contains(&got.len()),
        "{} messages passed",
        got.len()
    );
    assert!(stat(&srv, "upstream_limited") >= 260);
    assert_eq!(stat(&srv, "upstream_messages"), 300);
    // The client is still served.
    srv.push_until_ok(b"{\"uid\":\"flood\",\"x\":1}\n", LONG);

    let strict = Server::builder()
        .login_reply()
        .set("max_upstream_rate=5")
        .set("upstream_rate_close=true")
        .start();
    let mut c = strict.login_acked("flood");
    // The sixth message in a second is one too many.
    for i in 0..6 {
        c.send_text(&format!("m{i}"));
    }
    let deadline = Instant::now() + LONG;
    loop {
        match c.recv(deadline.saturating_duration_since(Instant::now())) {
            Ok(tungstenite::Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1008);
                assert_eq!(f.reason.as_str(), "rate limit");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no close 1008: {e:?}"),
        }
    }
}

#[test]
fn a_subscriber_that_stops_reading_is_bounded_and_pushes_go_on() {
    let srv = Server::builder()
        .login_reply()
        .set("events=true")
        .set("max_send_buffer=65536")
        .set("slow_timeout=1")
        .start();
    // Subscribes, reads the `ok`, then never reads again.
    let mut stuck = TcpStream::connect(("127.0.0.1", srv.text)).expect("connect");
    socket2::SockRef::from(&stuck)
        .set_recv_buffer_size(4096)
        .ok();
    stuck
        .write_all(b"{\"cmd\":\"subscribe\",\"events\":[\"message\"]}\n")
        .expect("write");
    let mut ok = [0u8; 3];
    stuck.read_exact(&mut ok).expect("ok");
    assert_eq!(&ok, b"ok\n");
    assert!(wait_until(LONG, || stat(&srv, "subscribers") == 1));

    let mut talker = srv.login_acked("talker");
    let mut other = srv.login_acked("other");
    // Messages until the kernel's buffers for the subscriber are full and its queue stays
    // over max_send_buffer: then it is closed as a slow consumer after slow_timeout.
    let big = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stat(&srv, "subscribers") == 1 {
        assert!(
            Instant::now() < deadline,
            "the stuck subscriber is still there: {}",
            show(&srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n").body)
        );
        for _ in 0..500 {
            talker.send_text(&big);
        }
        talker.roundtrip();
        // Pushes are not held up by the subscriber that does not read.
        let t = Instant::now();
        assert_eq!(srv.text_push(b"{\"uid\":\"other\",\"n\":1}\n"), b"ok\n");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(other.recv_text(LONG), "{\"uid\":\"other\",\"n\":1}");
    }
    assert!(stat(&srv, "events_dropped") > 0);
    assert!(stat(&srv, "slow_closed") >= 1);
}

#[test]
fn event_commands_are_checked() {
    let off = Server::start();
    let mut t = TextConn::connect(off.text);
    t.send(b"{\"cmd\":\"subscribe\"}\n");
    let r = t.read_lines(1, REPLY);
    assert!(show(&r).contains("events are off"), "{}", show(&r));

    let srv = Server::builder().login_reply().set("events=true").start();
    let mut t = TextConn::connect(srv.text);
    t.send(b"{\"cmd\":\"subscribe\",\"events\":[\"nope\"]}\n");
    assert!(show(&t.read_lines(1, REPLY)).contains("unknown event `nope`"));
    t.send(b"{\"cmd\":\"reply\",\"conn\":\"1.2.3\",\"data\":\"x\"}\n");
    assert_eq!(t.read_lines(1, REPLY), b"fail\n");
    t.send(b"{\"cmd\":\"ack\",\"conn\":\"zz\",\"ack\":1}\n");
    assert!(show(&t.read_lines(1, REPLY)).contains("names no connection"));

    // A reply by `conn` reaches that connection only, a binary one as a binary frame.
    let sub = Sub::connect(&srv, r#"["login"]"#);
    let mut a = srv.login_acked("a");
    let mut a2 = srv.login_acked("a");
    let login = sub.wait("login", LONG, |v| v["uid"] == "a");
    let conn = login["conn"].as_str().expect("conn").to_string();
    t.send(format!("{{\"cmd\":\"reply\",\"conn\":\"{conn}\",\"data\":\"just you\"}}\n").as_bytes());
    assert_eq!(t.read_lines(1, REPLY), b"ok\n");
    t.send(
        format!("{{\"cmd\":\"reply\",\"conn\":\"{conn}\",\"data\":\"AAE=\",\"binary\":true}}\n")
            .as_bytes(),
    );
    assert_eq!(t.read_lines(1, REPLY), b"ok\n");
    assert_eq!(a.recv_text(LONG), "just you");
    match a.recv(LONG) {
        Ok(tungstenite::Message::Binary(b)) => assert_eq!(&b[..], &[0, 1]),
        other => panic!("{other:?}"),
    }
    a2.expect_silence(Duration::from_millis(300));
    // Unsubscribed: no more events.
    let mut s = TextConn::from_stream(sub.stream.try_clone().expect("clone"));
    s.send(b"{\"cmd\":\"unsubscribe\"}\n");
    assert!(wait_until(LONG, || stat(&srv, "subscribers") == 0));
}

#[test]
fn a_killed_workers_uids_go_offline() {
    let srv = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .start();
    srv.wait_mesh();
    let sub = Sub::connect(&srv, r#"["login","online","offline"]"#);
    wait_subscribers_known(&srv, &[&sub]);
    let sub_pid = Owners::snapshot(&srv.worker_pids())
        .owner(&sub.stream)
        .expect("the subscriber's worker");
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let stats: Value = serde_json::from_slice(&r.body).expect("stats");
    let rows = stats["workers"].as_array().expect("rows").clone();
    let id_of = |pid: u32| {
        rows.iter()
            .find(|r| r["pid"].as_u64() == Some(u64::from(pid)))
            .and_then(|r| r["worker"].as_u64())
    };
    let survivor = id_of(sub_pid).expect("survivor id");
    let victim_pid = srv
        .worker_pids()
        .into_iter()
        .find(|p| *p != sub_pid)
        .expect("victim");
    sub.drain(Duration::from_millis(300));

    let mut clients = Vec::new();
    let mut login_in = HashMap::new();
    let mut owner_of = HashMap::new();
    for i in 0..40 {
        let uid = format!("d{i}");
        clients.push(srv.login_acked(&uid));
    }
    while login_in.len() < 40 || owner_of.len() < 40 {
        let v = sub.wait("logins and onlines", LONG, |v| {
            v["uid"].as_str().is_some_and(|u| u.starts_with('d'))
        });
        let uid = v["uid"].as_str().expect("uid").to_string();
        let w = v["worker"].as_u64().expect("worker");
        match v["event"].as_str() {
            Some("login") => login_in.insert(uid, w),
            Some("online") => owner_of.insert(uid, w),
            _ => None,
        };
    }
    // In the victim, and owned by the survivor: the survivor must say offline when it dies.
    let doomed: HashSet<&String> = login_in
        .iter()
        .filter(|(u, w)| **w != survivor && owner_of.get(*u) == Some(&survivor))
        .map(|(u, _)| u)
        .collect();
    assert!(
        !doomed.is_empty(),
        "no uid in the victim owned by the survivor"
    );
    signal(victim_pid, libc::SIGKILL);
    let mut offline = HashSet::new();
    while offline.len() < doomed.len() {
        let v = sub.wait("offline of the dead worker's uids", LONG, |v| {
            v["event"] == "offline"
        });
        let uid = v["uid"].as_str().expect("uid").to_string();
        assert_ne!(
            login_in.get(&uid),
            Some(&survivor),
            "offline for {uid}, still connected"
        );
        offline.insert(uid);
    }
    for u in doomed {
        assert!(offline.contains(u), "no offline for {u}");
    }
}

#[test]
fn the_php_subscriber_reconnects_after_a_graceful_reload() {
    if !php_ready() {
        return;
    }
    let mut srv = Server::builder()
        .workers(2)
        .login_reply()
        .set("events=true")
        .set("drain_timeout=1")
        .start();
    srv.wait_mesh();
    let php = Lines::spawn(
        "subscriber.php",
        Command::new("php").args([
            workspace_root()
                .join("scripts/php/subscriber.php")
                .to_str()
                .expect("path"),
            "127.0.0.1",
            &srv.text.to_string(),
            "login,message",
        ]),
    );
    php.wait("subscribed", LONG, |l| l == "subscribed");
    let old = srv.worker_pids();
    let out = srv.cli(&["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "reload: {}", show(&out.stderr));
    assert!(wait_until(Duration::from_secs(20), || {
        let now = srv.worker_pids();
        now.len() == 2 && now.is_disjoint(&old)
    }));
    // The old worker retired the subscriber's connection; the script subscribed again.
    php.wait("subscribed again", LONG, |l| l == "subscribed");
    srv.wait_mesh();
    // New workers, same chat: a message reaches the consumer and its push comes back.
    let deadline = Instant::now() + LONG;
    let mut a = srv.login_acked("after");
    let mut b = srv.login_acked("other");
    loop {
        // Until every new worker knows the subscriber (a message before that has no taker).
        a.send_text(r#"{"to":"other","text":"after reload"}"#);
        if b.try_recv_text(Duration::from_millis(300)).as_deref() == Some("after: after reload") {
            break;
        }
        assert!(Instant::now() < deadline, "no chat after the reload");
    }
    assert_eq!(a.recv_text(LONG), "sent");
}
