//! Events from clients on the text port: backends that `subscribe` get `login`, `message`,
//! `logout`, `online` and `offline` as JSON lines, answer with `reply`, `ack` and pushes, and
//! are bounded like any slow consumer; clients are held to `max_upstream_rate`.
//!
//! The chat runs through the real `php` consumer (`scripts/php/subscriber.php`) between a
//! plain WebSocket and the real socket.io-client under Node (`scripts/node/sio-chat.js`), with
//! two workers and the two clients in different ones. Without php or node (and CI unset) those
//! tests print a skip note.

mod common;
mod events_common;

use common::*;
use events_common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

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
