//! History and recovery in a cluster: two nodes of two workers each on one real `redis-server`
//! (started by each test on a free port), with `history_size` > 0, so a uid's history is in
//! Redis. A Socket.IO v4 page (the real socket.io-client under Node) that drops on node A comes
//! back on node B recovered; a plain WebSocket `?since=` recovers on the other node; offline
//! delivery, the `history` command and the API work from either node; group pushes are kept
//! once per member; expired history and Redis restarted empty give `recovered: false` (in the
//! same epoch, and in a new one); bad positions are refused.
//!
//! The page reaches the nodes through a small TCP switch (`sio_page::Switch`), so that its
//! reconnection (to the same URL, as a page behind a load balancer) lands on the other node.

mod common;
mod history_nodes;
mod sio_page;

use common::*;
use history_nodes::*;
use serde_json::Value;
use sio_page::{sio_v4_ready, Page, Switch};
use std::time::{Duration, Instant};

/// The `n`s of the messages, in the order received.
fn numbers(msgs: &[String]) -> Vec<u64> {
    msgs.iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m).expect("message JSON");
            v["n"].as_u64().expect("n")
        })
        .collect()
}

#[test]
fn socketio_page_dropped_on_one_node_recovers_on_another() {
    if !Redis::available() || !sio_v4_ready() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    let switch = Switch::start(a.socketio);
    let mut page = Page::spawn(switch.port, "sc1");
    let mut msgs = Vec::new();
    let first = page.first_connect(&mut msgs);
    let id = first
        .split(' ')
        .find_map(|w| w.strip_prefix("id="))
        .expect("socket id")
        .to_string();
    // Pushes entering the other node reach the page once its login is known in Redis; the
    // numbers sent before that answered `fail` (kept, but the page had no position yet).
    let mut n = push_until_ok(&b, "sc1", 0);
    page.until_messages(&mut msgs, 1);
    let skipped = n - 1;
    let nodes = [&a, &b];
    for round in 0..4usize {
        for i in 0..3 {
            assert_eq!(cmd(nodes[i % 2], &seed("sc1", n)), "ok\n");
            n += 1;
        }
        page.until_messages(&mut msgs, (n - skipped) as usize);
        // The next connection goes to the other node.
        let next = nodes[(round + 1) % 2];
        switch.to(next.socketio);
        page.command("drop 300");
        page.wait_for("disconnect", &mut msgs);
        for i in 0..5 {
            let r = cmd(nodes[i % 2], &seed("sc1", n));
            assert!(r == "ok\n" || r == "fail\n", "{r}");
            n += 1;
        }
        let again = page.wait_for("connect", &mut msgs);
        assert!(
            again.contains("recovered=true"),
            "round {round}: {again}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        assert!(again.ends_with(&format!("id={id}")), "same id: {again}");
        // Still logged in on the new node: a push entering either node reaches it.
        assert_eq!(cmd(nodes[round % 2], &seed("sc1", n)), "ok\n");
        n += 1;
        page.until_messages(&mut msgs, (n - skipped) as usize);
    }
    page.command("quit");
    let got = numbers(&msgs);
    let want: Vec<u64> = (skipped..n).collect();
    assert_eq!(got, want, "every message once, in order");
}

#[test]
fn websocket_since_recovers_on_another_node() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    let (mut c, head) = login_env(&a, "/?envelope=1", "ws1");
    assert_eq!(head["type"], "position", "{head}");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    // Pushes entering B reach the client on A, with consecutive offsets from the position.
    let mut n = push_until_ok(&b, "ws1", 0);
    let mut last = recv_json(&mut c);
    while n_of(&last) != n - 1 {
        last = recv_json(&mut c);
    }
    for k in 0..3 {
        assert_eq!(
            cmd(if k % 2 == 0 { &a } else { &b }, &seed("ws1", n)),
            "ok\n"
        );
        let m = recv_json(&mut c);
        assert_eq!(n_of(&m), n);
        assert_eq!(m["epoch"], epoch.as_str());
        assert_eq!(
            m["offset"].as_u64(),
            last["offset"].as_u64().map(|o| o + 1),
            "{m}"
        );
        last = m;
        n += 1;
    }
    let offset = last["offset"].as_u64().expect("offset");
    c.close();
    let away: Vec<u64> = (n..n + 4).collect();
    for (k, m) in away.iter().enumerate() {
        let r = cmd(if k % 2 == 0 { &a } else { &b }, &seed("ws1", *m));
        assert!(r == "ok\n" || r == "fail\n", "{r}");
    }
    n += 4;
    // Back on B with its position: recovered, what it missed in order, then live ones.
    let (mut c2, head) = login_env(&b, &format!("/?since={epoch}:{offset}"), "ws1");
    assert_eq!(head["type"], "recovery", "{head}");
    assert_eq!(head["recovered"], true, "{head}\n{}", b.log());
    assert_eq!(head["epoch"], epoch.as_str());
    for m in &away {
        assert_eq!(n_of(&recv_json(&mut c2)), *m);
    }
    assert_eq!(cmd(&a, &seed("ws1", n)), "ok\n");
    assert_eq!(n_of(&recv_json(&mut c2)), n);
    c2.expect_silence(Duration::from_millis(300));
    // Bad positions, on either node: refused, never another uid's messages.
    drop(c2);
    for (srv, uid, since) in [
        (&a, "ws1", format!("{epoch}:{}", offset + 1000)),
        (&b, "ws1", format!("{epoch}z:1")),
        (&a, "ws1", "1234:1".to_string()),
        (&b, "ws1", "garbage".to_string()),
        (&a, "ws2", format!("{epoch}:0")),
    ] {
        let (mut c3, head) = login_env(srv, &format!("/?since={since}"), uid);
        assert_eq!(head["recovered"], false, "{since}: {head}");
        if head["type"] == "recovery" && head.get("error").is_none() {
            c3.expect_silence(Duration::from_millis(200));
        }
    }
}

#[test]
fn offline_delivery_history_command_and_api_across_nodes() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &["offline_delivery=true"]);
    // Nobody anywhere: the seed line still answers fail, `{"cmd":"push"}` says stored, the
    // JSON API says so too.
    assert_eq!(cmd(&a, r#"{"uid":"off1","m":1}"#), "fail\n");
    assert_eq!(
        cmd(&a, r#"{"cmd":"push","to":"off1","data":{"m":2}}"#),
        "stored\n"
    );
    let body = r#"{"to":"off1","data":{"m":3}}"#;
    let r = b.http(
        format!(
            "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v, serde_json::json!({"delivered": 0, "stored": true}));
    // Either node reads what is kept, from Redis.
    let h: Value =
        serde_json::from_str(&cmd(&b, r#"{"cmd":"history","uid":"off1"}"#)).expect("history reply");
    let msgs = h["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 3, "{h}");
    assert_eq!(msgs[0]["data"], r#"{"uid":"off1","m":1}"#);
    assert_eq!(msgs[1]["data"], r#"{"m":2}"#);
    assert_eq!(h["offset"], 3, "{h}");
    let api: Value = serde_json::from_slice(&a.http(&get("/api/history/off1")).body).expect("json");
    assert_eq!(api, h);
    // The next login, on the other node, gets them in order, once.
    let mut c = b.login("off1");
    assert_eq!(c.recv_text(REPLY), r#"{"uid":"off1","m":1}"#);
    assert_eq!(c.recv_text(REPLY), r#"{"m":2}"#);
    assert_eq!(c.recv_text(REPLY), r#"{"m":3}"#);
    c.expect_silence(Duration::from_millis(300));
    let mut c2 = a.login("off1");
    c2.expect_silence(Duration::from_millis(300));
    // A uid nobody pushed to: an empty history.
    let h: Value =
        serde_json::from_str(&cmd(&a, r#"{"cmd":"history","uid":"none"}"#)).expect("json");
    assert_eq!(h["messages"], serde_json::json!([]), "{h}");
}

#[test]
fn redis_down_then_restarted_empty_gives_recovered_false_in_a_new_epoch() {
    if !Redis::available() {
        return;
    }
    let port = free_port();
    let mut redis = Redis::start_on(port);
    let (a, b) = two_nodes(&redis, &[]);
    let (mut c, head) = login_env(&a, "/?envelope=1", "rr1");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let n = push_until_ok(&b, "rr1", 0);
    let mut last = recv_json(&mut c);
    while n_of(&last) != n - 1 {
        last = recv_json(&mut c);
    }
    let offset = last["offset"].as_u64().expect("offset");
    c.close();
    let mut here = a.login("rr2");
    push_until_ok(&a, "rr2", 0);
    // Redis down: a recovery answers recovered false, and a push to a uid of this host is
    // still delivered (without a position).
    redis.kill();
    let (_c, head) = login_env(&b, &format!("/?since={epoch}:{offset}"), "rr1");
    assert_eq!(head["recovered"], false, "{head}");
    assert_eq!(cmd(&a, r#"{"uid":"rr2","down":1}"#), "ok\n");
    loop {
        if here.recv_text(REPLY).contains("\"down\":1") {
            break;
        }
    }
    // Restarted empty: the uid's history is gone and its epoch changes.
    let _redis = Redis::start_on(port);
    let again = wait_until(Duration::from_secs(20), || {
        let (_c, head) = login_env(&a, &format!("/?since={epoch}:{offset}"), "rr1");
        assert_eq!(head["recovered"], false, "{head}");
        head["epoch"].as_str().is_some_and(|e| e != epoch)
    });
    assert!(again, "no new epoch after Redis came back empty");
}

#[test]
fn group_pushes_are_kept_once_per_member_and_recovered_on_another_node() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    // One uid on both nodes (two devices), in a group joined on A.
    let (mut on_a, _) = login_env(&a, "/?envelope=1", "gm1");
    let (mut on_b, _) = login_env(&b, "/?envelope=1", "gm1");
    push_until_ok(&a, "gm1", 0);
    push_until_ok(&b, "gm1", 100);
    assert_eq!(
        cmd(&a, r#"{"cmd":"join","uid":"gm1","group":"g1"}"#),
        "ok\n"
    );
    // Wait until B knows the membership (a group push from B reaches both devices).
    let skip = |c: &mut Ws| loop {
        let m = recv_json(c);
        if m["data"].as_str().is_some_and(|d| d.contains("\"g\":")) {
            return m;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = cmd(&b, r#"{"cmd":"group","group":"g1","data":{"g":0}}"#);
        if r == "ok\n" {
            break;
        }
        assert!(Instant::now() < deadline, "group push never ok: {r}");
    }
    let mut seen_a = skip(&mut on_a);
    let mut seen_b = skip(&mut on_b);
    // Every group push reaches both devices once, at one position (written once).
    for g in 1..=3 {
        let line = format!("{{\"cmd\":\"group\",\"group\":\"g1\",\"data\":{{\"g\":{g}}}}}");
        assert_eq!(cmd(if g % 2 == 0 { &a } else { &b }, &line), "ok\n");
        let (ma, mb) = (skip(&mut on_a), skip(&mut on_b));
        assert_eq!(ma["offset"], mb["offset"], "{ma} {mb}");
        assert_eq!(ma["epoch"], mb["epoch"]);
        assert!(ma["data"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("\"g\":{g}"))));
        assert!(ma["offset"].as_u64() > seen_a["offset"].as_u64());
        (seen_a, seen_b) = (ma, mb);
    }
    assert_eq!(seen_a["offset"], seen_b["offset"]);
    let (epoch, offset) = (
        seen_a["epoch"].as_str().expect("epoch").to_string(),
        seen_a["offset"].as_u64().expect("offset"),
    );
    // A's device drops; group pushes go on (B's device holds the uid, so they are kept).
    on_a.close();
    for g in 4..=5 {
        let line = format!("{{\"cmd\":\"group\",\"group\":\"g1\",\"data\":{{\"g\":{g}}}}}");
        assert_eq!(cmd(&a, &line), "ok\n");
        skip(&mut on_b);
    }
    // It comes back on B and gets both, once, in order.
    let (mut back, head) = login_env(&b, &format!("/?since={epoch}:{offset}"), "gm1");
    assert_eq!(head["recovered"], true, "{head}");
    for g in 4..=5 {
        let m = recv_json(&mut back);
        assert!(
            m["data"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("\"g\":{g}"))),
            "{m}"
        );
    }
    back.expect_silence(Duration::from_millis(300));
}

#[test]
fn expired_history_is_not_recovered_in_a_cluster() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &["history_ttl=1"]);
    let (c, head) = login_env(&a, "/?envelope=1", "ex1");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let offset = head["offset"].as_u64().expect("offset");
    c.close();
    let r = cmd(&b, &seed("ex1", 1));
    assert!(r == "ok\n" || r == "fail\n", "{r}");
    // Gone after `history_ttl` (kept until then: not checked, a second is short on a busy
    // host).
    let read = |srv: &Server| -> usize {
        let h: Value = serde_json::from_str(&cmd(srv, r#"{"cmd":"history","uid":"ex1"}"#))
            .expect("history reply");
        h["messages"].as_array().map_or(0, Vec::len)
    };
    assert!(wait_until(Duration::from_secs(10), || read(&b) == 0));
    // The position from before it: the gap cannot be filled, in the same epoch.
    let (_c, head) = login_env(&b, &format!("/?since={epoch}:{offset}"), "ex1");
    assert_eq!(head["recovered"], false, "{head}");
    assert_eq!(head["epoch"], epoch.as_str());
}

#[test]
fn a_group_member_dropped_everywhere_recovers_what_the_group_got_meanwhile() {
    if !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis, &[]);
    // The uid's one device is on B; it joins a group there, and A learns of the membership.
    let (mut dev, _) = login_env(&b, "/?envelope=1", "gd1");
    let n = push_until_ok(&a, "gd1", 0);
    assert_eq!(
        cmd(&b, r#"{"cmd":"join","uid":"gd1","group":"gd"}"#),
        "ok\n"
    );
    let mut last = Value::Null;
    for _ in 0..n {
        last = recv_json(&mut dev);
    }
    assert_eq!(
        cmd(&a, r#"{"cmd":"group","group":"gd","data":"before"}"#),
        "ok\n"
    );
    let before = recv_json(&mut dev);
    assert_eq!(before["data"], "before", "{before} after {last}");
    let (epoch, offset) = (
        before["epoch"].as_str().expect("epoch").to_string(),
        before["offset"].as_u64().expect("offset"),
    );
    // The device drops: nobody anywhere holds the uid, and the group speaks twice, through
    // A, which never held it.
    dev.close();
    let gone = wait_until(Duration::from_secs(10), || {
        cmd(&a, r#"{"cmd":"online","uid":"gd1"}"#) == "0\n"
    });
    assert!(gone, "gd1 still online");
    for word in ["while away 1", "while away 2"] {
        let line = format!("{{\"cmd\":\"group\",\"group\":\"gd\",\"data\":\"{word}\"}}");
        let r = cmd(&a, &line);
        assert!(r == "ok\n" || r == "fail\n", "{r}");
    }
    // It comes back on A and gets both, once, in order, with its gap filled.
    let (mut back, head) = login_env(&a, &format!("/?since={epoch}:{offset}"), "gd1");
    assert_eq!(head["recovered"], true, "{head}");
    for word in ["while away 1", "while away 2"] {
        let m = recv_json(&mut back);
        assert_eq!(m["data"], word, "{m}");
    }
    back.expect_silence(Duration::from_millis(300));
}
