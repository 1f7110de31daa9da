//! Broadcasts to everyone (`all`) with the history in a cluster: two nodes on one real
//! `redis-server` (started by each test on a free port), `history_size` > 0. A broadcast gets a
//! position per uid like any push to it, so a plain WebSocket (`?since=`) or a Socket.IO v4
//! page (the real socket.io-client under Node) that drops on one node and comes back on the
//! other recovers the broadcasts it missed, in order with its own pushes, once; a uid held on
//! both nodes gets each broadcast once per connection at one position; a client without the
//! envelope gets the plain bytes; a uid with no connection anywhere gets it at its next login
//! with offline delivery; and a broadcast, a push to a list and a group push to more uids
//! than one Redis script writes reach every one of them, answered with the right count.
//!
//! A broadcast is written by every node worker when it gets it, so the text port answers `ok`
//! before it is kept: a test that needs a broadcast kept before its next push waits until the
//! `history` command shows it.

mod common;
mod history_nodes;
mod sio_page;

use common::*;
use history_nodes::*;
use serde_json::Value;
use sio_page::{sio_v4_ready, Page, Switch};
use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

/// A broadcast line with number `n`.
fn all(n: u64) -> String {
    format!("{{\"cmd\":\"all\",\"data\":{{\"n\":{n}}}}}")
}

/// How many messages `srv` says are kept for `uid`.
fn kept(srv: &Server, uid: &str) -> usize {
    let line = format!("{{\"cmd\":\"history\",\"uid\":\"{uid}\"}}");
    let h: Value = serde_json::from_str(&cmd(srv, &line)).expect("history reply");
    h["messages"].as_array().map_or(0, Vec::len)
}

/// Sends `line` on `srv` and waits until `uid` has one more message kept.
fn send_kept(srv: &Server, uid: &str, line: &str) {
    let before = kept(srv, uid);
    let r = cmd(srv, line);
    assert!(r == "ok\n" || r == "fail\n", "{line}: {r}");
    let grew = wait_until(Duration::from_secs(10), || kept(srv, uid) > before);
    assert!(grew, "{line} was not kept for {uid}\n{}", srv.log());
}

/// Reads envelopes of `c` until the one with number `n`; returns it.
fn until_n(c: &mut Ws, n: u64) -> Value {
    loop {
        let m = recv_json(c);
        if m["type"] == "msg" && n_of(&m) == n {
            return m;
        }
    }
}

/// A JSON API push on `srv`; its answer.
fn api_push(srv: &Server, body: &str) -> Value {
    let r = srv.http(
        format!(
            "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    serde_json::from_slice(&r.body).expect("json")
}

#[test]
fn websocket_since_recovers_missed_broadcasts_on_another_node() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    let (mut c, head) = login_env(&a, "/?envelope=1", "ab1");
    assert_eq!(head["type"], "position", "{head}");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let n = push_until_ok(&b, "ab1", 0);
    let mut last = until_n(&mut c, n - 1);
    // Live: broadcasts through either node reach it with positions, consecutive with its
    // own pushes' (the numbers go on from the pushes').
    let mut n = n + 100;
    for k in 0..4 {
        let srv = if k % 2 == 0 { &b } else { &a };
        let line = if k % 2 == 0 { all(n) } else { seed("ab1", n) };
        assert_eq!(cmd(srv, &line), "ok\n");
        let m = recv_json(&mut c);
        assert_eq!(n_of(&m), n, "{m}");
        assert_eq!(m["epoch"], epoch.as_str(), "{m}");
        assert_eq!(
            m["offset"].as_u64(),
            last["offset"].as_u64().map(|o| o + 1),
            "{m} after {last}"
        );
        last = m;
        n += 1;
    }
    let offset = last["offset"].as_u64().expect("offset");
    c.close();
    wait_offline(&b, "ab1");
    // Away: pushes to it and broadcasts interleave through B's text port (each kept before
    // the next is sent, so the order kept is the order sent).
    let mut away = Vec::new();
    for k in 0..6 {
        let line = if k % 3 == 1 { seed("ab1", n) } else { all(n) };
        send_kept(&b, "ab1", &line);
        away.push(n);
        n += 1;
    }
    // Back on B with its position: recovered, what it missed once and in order, then live
    // ones.
    let (mut c2, head) = login_env(&b, &format!("/?since={epoch}:{offset}"), "ab1");
    assert_eq!(head["type"], "recovery", "{head}");
    assert_eq!(head["recovered"], true, "{head}\n{}", b.log());
    assert_eq!(head["epoch"], epoch.as_str());
    let mut at = offset;
    for want in &away {
        let m = recv_json(&mut c2);
        assert_eq!(n_of(&m), *want, "{m}");
        assert_eq!(m["offset"].as_u64(), Some(at + 1), "{m}");
        at += 1;
    }
    // Live again (each received before the next is sent: a broadcast and a push sent right
    // after it are written by different workers, in no fixed order).
    for (k, (srv, line)) in [(&a, all(n)), (&b, seed("ab1", n + 1)), (&a, all(n + 2))]
        .into_iter()
        .enumerate()
    {
        assert_eq!(cmd(srv, &line), "ok\n");
        let m = recv_json(&mut c2);
        assert_eq!(n_of(&m), n + k as u64, "{m}");
        assert_eq!(m["epoch"], epoch.as_str());
        assert_eq!(m["offset"].as_u64(), Some(at + 1), "{m}");
        at += 1;
    }
    c2.expect_silence(Duration::from_millis(300));
}

#[test]
fn a_uid_on_both_nodes_gets_each_broadcast_once_per_connection_at_one_position() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    // Three devices: two on A (perhaps on two workers), one on B.
    let mut devs: Vec<Ws> = [&a, &a, &b]
        .iter()
        .map(|srv| login_env(srv, "/?envelope=1", "ab2").0)
        .collect();
    // Every device gets a push from either node (all three holders known in Redis).
    let mut n = 0;
    let synced = wait_until(Duration::from_secs(15), || {
        let r = cmd(if n % 2 == 0 { &a } else { &b }, &seed("ab2", n));
        n += 1;
        if r != "ok\n" {
            return false;
        }
        devs.iter_mut()
            .all(|d| d.try_recv_text(Duration::from_millis(500)).is_some())
    });
    assert!(synced, "the devices never all got a push");
    let sync = n + 1000;
    assert_eq!(cmd(&a, &seed("ab2", sync)), "ok\n");
    let mut last: Vec<Value> = devs.iter_mut().map(|d| until_n(d, sync)).collect();
    assert!(last.windows(2).all(|w| w[0]["offset"] == w[1]["offset"]));
    for k in 0..4u64 {
        let bn = sync + 1 + k;
        assert_eq!(cmd(if k % 2 == 0 { &a } else { &b }, &all(bn)), "ok\n");
        let got: Vec<Value> = devs.iter_mut().map(recv_json).collect();
        for (m, before) in got.iter().zip(&last) {
            assert_eq!(n_of(m), bn, "{m}");
            assert_eq!(m["epoch"], before["epoch"], "{m}");
            assert_eq!(
                m["offset"].as_u64(),
                before["offset"].as_u64().map(|o| o + 1),
                "written once: {m} after {before}"
            );
        }
        last = got;
    }
    for d in &mut devs {
        d.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn a_client_without_the_envelope_gets_the_plain_broadcast_bytes() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    let mut c = a.login("pl1");
    b.push_until_ok(b"{\"uid\":\"pl1\",\"sync\":1}\n", Duration::from_secs(15));
    loop {
        if c.recv_text(REPLY).contains("\"sync\":1") {
            break;
        }
    }
    // The text port: the data's text, as without a history; `ok` as always.
    assert_eq!(cmd(&b, r#"{"cmd":"all","data":"hello everyone"}"#), "ok\n");
    assert_eq!(c.recv_text(REPLY), "hello everyone");
    assert_eq!(cmd(&a, r#"{"cmd":"all","data":{"a":[1, 2]}}"#), "ok\n");
    assert_eq!(c.recv_text(REPLY), r#"{"a":[1,2]}"#);
    // A binary broadcast stays a binary frame of the same bytes.
    assert_eq!(
        cmd(&b, r#"{"cmd":"all","data":"AAH/","binary":true}"#),
        "ok\n"
    );
    loop {
        match c.recv(REPLY) {
            Ok(tungstenite::Message::Binary(d)) => break assert_eq!(d.as_ref(), &[0u8, 1, 255]),
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
    // The seed's HTTP publish to everyone answers `ok`, and the page gets the escaped text.
    let r = b.http(&post_form("type=publish&content=%3Cb%3Ehi%3C%2Fb%3E"));
    assert_eq!(r.body, b"ok");
    assert_eq!(c.recv_text(REPLY), "&lt;b&gt;hi&lt;/b&gt;");
    // The JSON API counts the connections reached (the one client).
    let v = api_push(&a, r#"{"all":true,"data":"counted"}"#);
    assert_eq!(v, serde_json::json!({"delivered": 1}));
    assert_eq!(c.recv_text(REPLY), "counted");
    // Kept for it, as pushes to it are (the last two: the HTTP ones).
    let h: Value =
        serde_json::from_str(&cmd(&a, r#"{"cmd":"history","uid":"pl1"}"#)).expect("history");
    let msgs = h["messages"].as_array().expect("messages");
    let tail: Vec<&str> = msgs[msgs.len() - 2..]
        .iter()
        .map(|m| m["data"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(tail, ["&lt;b&gt;hi&lt;/b&gt;", "counted"], "{h}");
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn socketio_page_recovers_a_missed_broadcast_on_another_node() {
    if !Redis::available() || !sio_v4_ready() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    let switch = Switch::start(a.socketio);
    let mut page = Page::spawn(switch.port, "sa1");
    let mut msgs = Vec::new();
    page.first_connect(&mut msgs);
    let n = push_until_ok(&b, "sa1", 0);
    page.until_messages(&mut msgs, 1);
    let skipped = n - 1;
    // A live broadcast first.
    assert_eq!(cmd(&b, &all(n)), "ok\n");
    page.until_messages(&mut msgs, 2);
    let mut n = n + 1;
    // The next connection goes to B; the page is away long enough for what follows.
    switch.to(b.socketio);
    page.command("drop 3000");
    page.wait_for("disconnect", &mut msgs);
    for k in 0..4 {
        let line = if k % 2 == 0 { all(n) } else { seed("sa1", n) };
        send_kept(&b, "sa1", &line);
        n += 1;
    }
    let again = page.wait_for("connect", &mut msgs);
    assert!(
        again.contains("recovered=true"),
        "{again}\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(cmd(&a, &all(n)), "ok\n");
    n += 1;
    page.until_messages(&mut msgs, (n - skipped) as usize);
    page.command("quit");
    let got: Vec<u64> = msgs.iter().map(|m| n_in(m)).collect();
    let want: Vec<u64> = (skipped..n).collect();
    assert_eq!(got, want, "every message once, in order");
}

#[test]
fn a_broadcast_while_a_uid_is_offline_everywhere_reaches_its_next_login() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &["offline_delivery=true"]);
    let c = a.login("of1");
    let line = r#"{"cmd":"online","uid":"of1"}"#;
    let there = wait_until(Duration::from_secs(10), || cmd(&b, line) == "1\n");
    assert!(there, "of1 never online");
    c.close();
    wait_offline(&b, "of1");
    send_kept(&b, "of1", r#"{"cmd":"all","data":"while you were away"}"#);
    // The next login, on the other node: the broadcast, once.
    let mut c = b.login("of1");
    assert_eq!(c.recv_text(REPLY), "while you were away");
    c.expect_silence(Duration::from_millis(300));
    let mut c2 = a.login("of1");
    c2.expect_silence(Duration::from_millis(300));
}

/// The next server data frame's payload on a raw WebSocket (server frames are unmasked;
/// control frames are skipped).
fn raw_frame(s: &mut TcpStream) -> Vec<u8> {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).expect("frame head");
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).expect("length");
                usize::from(u16::from_be_bytes(l))
            }
            127 => panic!("frame too long for this test"),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("payload");
        if head[0] & 0x0f < 8 {
            return payload;
        }
    }
}

#[test]
fn pushes_to_more_uids_than_one_write_holds_reach_them_all() {
    if !Redis::available() {
        return;
    }
    const UIDS: usize = 1200;
    let redis = Redis::start();
    // Every uid on one worker: its share is written in at least three chunks.
    let a = node_of(&redis.url(), "node-a", 1, &[]);
    let b = node(&redis.url(), "node-b", &[]);
    let mut socks: Vec<TcpStream> = (0..UIDS)
        .map(|i| ws_login(a.ws, &format!("m{i}"), None))
        .collect();
    let counted = wait_until(Duration::from_secs(20), || {
        cmd(&a, r#"{"cmd":"count"}"#).contains(&format!("\"connections\":{UIDS}"))
    });
    assert!(counted, "not every uid logged in");
    // Every uid's holder is in Redis once a push to the last one is delivered.
    b.push_until_ok(
        format!("{{\"uid\":\"m{}\",\"sync\":1}}\n", UIDS - 1).as_bytes(),
        Duration::from_secs(15),
    );
    let last = socks.last_mut().expect("a socket");
    last.set_read_timeout(Some(REPLY)).ok();
    loop {
        if raw_frame(last).starts_with(b"{\"uid\"") {
            break;
        }
    }
    let v = api_push(&b, r#"{"all":true,"data":"to every one"}"#);
    assert_eq!(v, serde_json::json!({"delivered": UIDS}), "{}", a.log());
    // A push naming every uid, and a group of them all: written in chunks too, answered once.
    let names: Vec<String> = (0..UIDS).map(|i| format!("m{i}")).collect();
    let to = serde_json::to_string(&names).expect("json");
    let line = format!("{{\"cmd\":\"push\",\"to\":{to},\"data\":\"listed\"}}");
    assert_eq!(cmd(&b, &line), "ok\n");
    let v = api_push(&a, &format!("{{\"to\":{to},\"data\":\"listed again\"}}"));
    assert_eq!(v, serde_json::json!({"delivered": UIDS}));
    let mut joins = TextConn::connect(a.text);
    let lines: String = names
        .iter()
        .map(|u| format!("{{\"cmd\":\"join\",\"uid\":\"{u}\",\"group\":\"big\"}}\n"))
        .collect();
    joins.send(lines.as_bytes());
    let answers = joins.read_lines(UIDS, Duration::from_secs(20));
    assert_eq!(answers, "ok\n".repeat(UIDS).as_bytes());
    let v = api_push(&b, r#"{"group":"big","data":"grouped"}"#);
    assert_eq!(v, serde_json::json!({"delivered": UIDS}));
    // Last: the text port answers a broadcast before it is written.
    assert_eq!(cmd(&b, r#"{"cmd":"all","data":"and again"}"#), "ok\n");
    let want = [
        "to every one",
        "listed",
        "listed again",
        "grouped",
        "and again",
    ];
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_read_timeout(Some(REPLY)).ok();
        let mut got = raw_frame(s);
        // The sync pushes that answered `fail` went to nobody; the last one went to m1199.
        if i == UIDS - 1 {
            while got.starts_with(b"{\"uid\"") {
                got = raw_frame(s);
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), want[0], "m{i}");
        for w in &want[1..] {
            assert_eq!(String::from_utf8_lossy(&raw_frame(s)), *w, "m{i}");
        }
    }
    // Kept for each, at a position.
    for uid in ["m0", "m599", "m1199"] {
        let line = format!("{{\"cmd\":\"history\",\"uid\":\"{uid}\"}}");
        let h: Value = serde_json::from_str(&cmd(&b, &line)).expect("history");
        let data: Vec<&str> = h["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter_map(|m| m["data"].as_str())
            .filter(|d| !d.starts_with("{\"uid\""))
            .collect();
        assert_eq!(data, want, "{uid}: {h}");
    }
}

#[test]
fn with_redis_down_a_broadcast_is_still_delivered_on_the_entry_host() {
    if !Redis::available() {
        return;
    }
    let mut redis = Redis::start();
    let a = node(&redis.url(), "node-a", &[]);
    let mut plain = a.login("rd1");
    let (mut env, _) = login_env(&a, "/?envelope=1", "rd2");
    a.push_until_ok(b"{\"uid\":\"rd1\",\"sync\":1}\n", Duration::from_secs(15));
    a.push_until_ok(b"{\"uid\":\"rd2\",\"sync\":1}\n", Duration::from_secs(15));
    loop {
        if plain.recv_text(REPLY).contains("\"sync\":1") {
            break;
        }
    }
    until_sync(&mut env);
    redis.kill();
    // Not kept, no position: the way without a history, to every worker of this host.
    assert_eq!(cmd(&a, r#"{"cmd":"all","data":"redis is down"}"#), "ok\n");
    assert_eq!(plain.recv_text(REPLY), "redis is down");
    let m = recv_json(&mut env);
    assert_eq!(
        m,
        serde_json::json!({"type": "msg", "data": "redis is down"})
    );
}

/// Reads envelopes of `c` until the `sync` push.
fn until_sync(c: &mut Ws) {
    loop {
        let m = recv_json(c);
        if m["data"].as_str().is_some_and(|d| d.contains("\"sync\":1")) {
            return;
        }
    }
}
