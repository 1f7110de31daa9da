//! History and recovery for plain WebSocket clients and backends (with `history_size` > 0):
//! the opt-in envelope with positions, `?since=EPOCH:OFFSET` filling the gap of a dropped
//! client (on one worker, and across two workers with the client coming back to the other
//! one), the seed's bytes unchanged without the opt-in, bad `since` input refused without
//! harm, offline delivery with the `history` command and API, eviction at
//! `history_max_bytes`, and expired history answering `recovered: false`.
//!
//! Synchronisation: an envelope connection gets one `position` (or `recovery`) frame once its
//! login is registered and its owner answered; tests wait for it before pushing.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// A seed push line for `uid` with number `n`.
fn line(uid: &str, n: u32) -> String {
    format!("{{\"uid\":\"{uid}\",\"n\":{n}}}")
}

/// The `n` of an envelope's data.
fn n_of(env: &Value) -> u64 {
    assert_eq!(env["type"], "msg", "{env}");
    let data: Value = serde_json::from_str(env["data"].as_str().expect("data")).expect("json");
    data["n"].as_u64().expect("n")
}

/// A push whose answer may be `ok` or `fail` (nobody connected: kept all the same).
trait PushKept {
    fn push_until_fail_or_ok(&self, line: &[u8]);
}

impl PushKept for Server {
    fn push_until_fail_or_ok(&self, line: &[u8]) {
        let r = self.text_push(line);
        assert!(r == b"ok\n" || r == b"fail\n", "{}", show(&r));
    }
}

fn history_server(workers: usize) -> Server {
    let srv = Server::builder()
        .workers(workers)
        .set("history_size=100")
        .start();
    if workers > 1 {
        srv.wait_mesh();
    }
    srv
}

/// Drops a client after 3 messages, pushes more while it is away, and comes back with
/// `since` (on whichever worker the kernel chooses).
fn drop_and_recover(srv: &Server, uid: &str) {
    let (mut c1, head) = login_env(srv, "/?envelope=1", uid);
    assert_eq!(head["type"], "position", "{head}");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let mut last = head["offset"].as_u64().expect("offset");
    for n in 1..=3 {
        assert_eq!(
            srv.text_push(format!("{}\n", line(uid, n)).as_bytes()),
            b"ok\n"
        );
        let env = recv_json(&mut c1);
        assert_eq!(n_of(&env), u64::from(n));
        assert_eq!(env["epoch"], epoch.as_str());
        let off = env["offset"].as_u64().expect("offset");
        assert!(off > last, "offsets grow: {off} after {last}");
        last = off;
    }
    c1.close();
    // Until the server saw the close, a push may still be written to the dead connection:
    // push until `fail`, then more while the client is away.
    let mut n = 4;
    loop {
        let r = srv.text_push(format!("{}\n", line(uid, n)).as_bytes());
        n += 1;
        if r == b"fail\n" {
            break;
        }
        assert!(n < 200, "the close was never noticed");
    }
    for _ in 0..3 {
        assert_eq!(
            srv.text_push(format!("{}\n", line(uid, n)).as_bytes()),
            b"fail\n"
        );
        n += 1;
    }
    let path = format!("/?since={epoch}:{last}");
    let (mut c2, head) = login_env(srv, &path, uid);
    assert_eq!(head["type"], "recovery", "{head}");
    assert_eq!(head["recovered"], true, "{head}");
    let top = head["offset"].as_u64().expect("offset");
    let mut prev = last;
    for want in 4..n {
        let env = recv_json(&mut c2);
        assert_eq!(n_of(&env), u64::from(want), "in order, each once");
        let off = env["offset"].as_u64().expect("offset");
        assert!(off > prev);
        prev = off;
    }
    assert_eq!(prev, top, "the recovery ends at the announced offset");
    // Live again, exactly once.
    assert_eq!(
        srv.text_push(format!("{}\n", line(uid, 99)).as_bytes()),
        b"ok\n"
    );
    assert_eq!(n_of(&recv_json(&mut c2)), 99);
    c2.expect_silence(Duration::from_millis(300));
}

#[test]
fn since_recovers_what_a_dropped_client_missed() {
    let srv = history_server(1);
    drop_and_recover(&srv, "u1");
}

/// Per-worker figures from `GET /api/stats`: (worker id, value of `key`).
fn per_worker(srv: &Server, key: &str) -> Vec<(u64, u64)> {
    let r = srv.http(&get("/api/stats"));
    let v: Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            (
                w["worker"].as_u64().unwrap_or(0),
                w[key].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn recovery_on_another_worker() {
    let srv = history_server(2);
    assert_eq!(srv.worker_pids().len(), 2);
    // Two uids owned by different workers; each reconnection lands where the kernel puts it:
    // drop and come back until each was recovered by the worker that does not own its
    // history (16 tries each, a coin toss each time).
    let a = "u2";
    let b = (3..100)
        .map(|i| format!("u{i}"))
        .find(|u| herald_ipc::history_owner(u, 2) != herald_ipc::history_owner(a, 2))
        .expect("a uid of the other owner");
    for uid in [a, b.as_str()] {
        let owner = u64::from(herald_ipc::history_owner(uid, 2));
        let before: u64 = per_worker(&srv, "recovered")
            .iter()
            .filter(|&&(w, _)| w != owner)
            .map(|&(_, r)| r)
            .sum();
        let mut elsewhere = false;
        for _ in 0..16 {
            drop_and_recover(&srv, uid);
            let now: u64 = per_worker(&srv, "recovered")
                .iter()
                .filter(|&&(w, _)| w != owner)
                .map(|&(_, r)| r)
                .sum();
            if now > before {
                elsewhere = true;
                break;
            }
        }
        assert!(
            elsewhere,
            "{uid}: never recovered by the worker not owning it"
        );
    }
}

#[test]
fn seed_bytes_unchanged_with_a_history() {
    let srv = Server::builder()
        .set("history_size=100")
        .login_reply()
        .start();
    let mut c = srv.login_acked("s1");
    let seed = "{\"uid\":\"s1\",\"percent\":\"88%\"}";
    assert_eq!(srv.text_push(format!("{seed}\n").as_bytes()), b"ok\n");
    assert_eq!(c.recv_text(REPLY), seed);
    c.expect_silence(Duration::from_millis(300));
}

#[test]
fn bad_since_is_refused_without_harm() {
    let srv = history_server(1);
    let (mut c, head) = login_env(&srv, "/?envelope=1", "b1");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(
        srv.text_push(format!("{}\n", line("b1", 1)).as_bytes()),
        b"ok\n"
    );
    let top = recv_json(&mut c)["offset"].as_u64().expect("offset");
    // Someone else's messages exist too.
    assert_eq!(
        srv.text_push(format!("{}\n", line("other", 7)).as_bytes()),
        b"fail\n"
    );
    for since in [
        "garbage".to_string(),
        "zz:1".into(),
        format!("{epoch}:-1"),
        format!("{epoch}:{}", top + 1000),
        "1234:1".into(),
        format!("{epoch}:99999999999999999999999999"),
    ] {
        let (mut c2, head) = login_env(&srv, &format!("/?since={since}"), "b1");
        assert_eq!(head["type"], "recovery", "{since}: {head}");
        assert_eq!(head["recovered"], false, "{since}: {head}");
        // After a refusal of a readable position the client learns the current one; never
        // anyone's messages.
        if head.get("offset").is_some() {
            assert_eq!(head["epoch"], epoch.as_str());
        } else {
            let pos = recv_json(&mut c2);
            assert_eq!(pos["type"], "position", "{pos}");
        }
        c2.expect_silence(Duration::from_millis(100));
        c2.close();
    }
    // Still serving.
    assert_eq!(
        srv.text_push(format!("{}\n", line("b1", 2)).as_bytes()),
        b"ok\n"
    );
    assert_eq!(n_of(&recv_json(&mut c)), 2);
}

#[test]
fn offline_delivery_history_command_and_api() {
    let srv = Server::builder()
        .set("history_size=10")
        .set("offline_delivery=true")
        .start();
    // The seed line still answers fail; the JSON API says it was kept.
    assert_eq!(srv.text_push(b"{\"uid\":\"off1\",\"m\":1}\n"), b"fail\n");
    let body = r#"{"to":"off1","data":{"m":2}}"#;
    let r = srv.http(
        format!(
            "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v, serde_json::json!({"delivered": 0, "stored": true}));
    // `{"cmd":"push"}` says `stored` (not `ok`: nothing was delivered now).
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":\"off9\",\"data\":1}\n"),
        b"stored\n"
    );
    // A backend reads what is kept.
    let reply = srv.text_push(b"{\"cmd\":\"history\",\"uid\":\"off1\"}\n");
    let h: Value = serde_json::from_slice(&reply).expect("history reply");
    assert_eq!(h["uid"], "off1");
    let msgs = h["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 2, "{h}");
    assert_eq!(msgs[0]["data"], "{\"uid\":\"off1\",\"m\":1}");
    assert_eq!(msgs[1]["data"], "{\"m\":2}");
    let r = srv.http(&get("/api/history/off1"));
    assert_eq!(r.status, 200);
    let api: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(api, h);
    // The next login gets them, in order, once.
    let mut c = srv.login("off1");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"off1\",\"m\":1}");
    assert_eq!(c.recv_text(REPLY), "{\"m\":2}");
    c.expect_silence(Duration::from_millis(300));
    let mut c2 = srv.login("off1");
    c2.expect_silence(Duration::from_millis(300));
    // With the envelope: the kept messages with their positions, then the position.
    assert_eq!(srv.text_push(b"{\"uid\":\"off2\",\"m\":3}\n"), b"fail\n");
    let (mut e, first) = login_env(&srv, "/?envelope=1", "off2");
    assert_eq!(first["type"], "msg", "{first}");
    assert_eq!(first["data"], "{\"uid\":\"off2\",\"m\":3}");
    let pos = recv_json(&mut e);
    assert_eq!(pos["type"], "position", "{pos}");
    assert_eq!(pos["offset"], first["offset"]);
    e.expect_silence(Duration::from_millis(200));
}

#[test]
fn memory_bound_evicts_the_oldest() {
    let srv = Server::builder()
        .set("history_size=100")
        .set("history_max_bytes=4096")
        .start();
    let (mut c, head) = login_env(&srv, "/?envelope=1", "e1");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let big = "x".repeat(900);
    let first_line = format!("{{\"uid\":\"e1\",\"n\":1,\"pad\":\"{big}\"}}\n");
    assert_eq!(srv.text_push(first_line.as_bytes()), b"ok\n");
    let first = recv_json(&mut c)["offset"].as_u64().expect("offset");
    c.close();
    for n in 2..=10 {
        let l = format!("{{\"uid\":\"e1\",\"n\":{n},\"pad\":\"{big}\"}}\n");
        let r = srv.text_push(l.as_bytes());
        assert!(r == b"fail\n" || r == b"ok\n");
    }
    let r = srv.http(&get("/api/stats"));
    let stats: Value = serde_json::from_slice(&r.body).expect("stats");
    let t = &stats["totals"];
    assert!(t["history_evicted"].as_u64().expect("evicted") >= 6, "{t}");
    assert!(t["history_bytes"].as_u64().expect("bytes") <= 4096, "{t}");
    assert!(
        t["history_messages"].as_u64().expect("messages") <= 4,
        "{t}"
    );
    let m = srv.http(&get("/metrics"));
    assert!(find(&m.body, b"herald_history_evicted_total").is_some());
    // The messages after `first` are partly gone: not recoverable.
    let (_c2, head) = login_env(&srv, &format!("/?since={epoch}:{first}"), "e1");
    assert_eq!(head["recovered"], false, "{head}");
}

#[test]
fn expired_history_is_not_recovered() {
    let srv = Server::builder()
        .set("history_size=100")
        .set("history_ttl=1")
        .start();
    let (mut c, head) = login_env(&srv, "/?envelope=1", "t1");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(
        srv.text_push(format!("{}\n", line("t1", 1)).as_bytes()),
        b"ok\n"
    );
    let first = recv_json(&mut c)["offset"].as_u64().expect("offset");
    c.close();
    assert!(wait_until(REPLY, || srv
        .text_push(format!("{}\n", line("t1", 2)).as_bytes())
        == b"fail\n"));
    // Wait (on the server's own answer) until what was kept expired.
    assert!(wait_until(Duration::from_secs(10), || {
        let reply = srv.text_push(b"{\"cmd\":\"history\",\"uid\":\"t1\"}\n");
        let v: Value = serde_json::from_slice(&reply).unwrap_or_default();
        v["messages"].as_array().is_some_and(|m| m.is_empty())
    }));
    let (_c2, head) = login_env(&srv, &format!("/?since={epoch}:{first}"), "t1");
    assert_eq!(head["type"], "recovery");
    assert_eq!(head["recovered"], false, "{head}");
}

#[test]
fn broadcasts_and_groups_with_a_history() {
    let srv = history_server(2);
    let (mut env, _) = login_env(&srv, "/?envelope=1", "g1");
    let mut plain = srv.login("g2");
    srv.push_until_ok(b"{\"uid\":\"g2\",\"n\":0}\n", REPLY);
    assert_eq!(plain.recv_text(REPLY), "{\"uid\":\"g2\",\"n\":0}");
    // A broadcast to everyone is kept too: positioned for the envelope, bytes for the seed.
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"all\",\"data\":\"hi\"}\n"),
        b"ok\n"
    );
    let got = recv_json(&mut env);
    assert_eq!(got["data"], "hi", "{got}");
    assert!(got["offset"].as_u64().is_some(), "{got}");
    assert_eq!(plain.recv_text(REPLY), "hi");
    // A group push is kept for each member it reached, with the member's position.
    for uid in ["g1", "g2"] {
        let j = format!("{{\"cmd\":\"join\",\"uid\":\"{uid}\",\"group\":\"room\"}}\n");
        assert_eq!(srv.text_push(j.as_bytes()), b"ok\n");
    }
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"group\",\"group\":\"room\",\"data\":\"to room\"}\n"),
        b"ok\n"
    );
    let got = recv_json(&mut env);
    assert_eq!(got["data"], "to room");
    assert!(got["offset"].as_u64().is_some(), "{got}");
    assert_eq!(plain.recv_text(REPLY), "to room");
    for uid in ["g1", "g2"] {
        let reply =
            srv.text_push(format!("{{\"cmd\":\"history\",\"uid\":\"{uid}\"}}\n").as_bytes());
        let v: Value = serde_json::from_slice(&reply).expect("history");
        let last = v["messages"].as_array().and_then(|m| m.last()).cloned();
        assert_eq!(
            last.map(|m| m["data"].clone()),
            Some(Value::from("to room")),
            "{v}"
        );
    }
}

/// Logs in, gets one message, then reloads (`reload`, or `reload -g` when `graceful`) and
/// waits until the old worker is gone; returns the client's position and the connection.
fn position_then_reload(srv: &mut Server, uid: &str, graceful: bool) -> (String, u64) {
    let (mut c, head) = login_env(srv, "/?envelope=1", uid);
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(
        srv.text_push(format!("{}\n", line(uid, 1)).as_bytes()),
        b"ok\n"
    );
    let offset = recv_json(&mut c)["offset"].as_u64().expect("offset");
    let old = srv.worker_pids();
    let args: &[&str] = if graceful {
        &["reload", "-g"]
    } else {
        &["reload"]
    };
    let out = srv.cli(args, Duration::from_secs(30));
    assert!(out.status.success(), "{args:?}: {}", show(&out.stderr));
    // The old worker goes (a graceful one after drain_timeout closed its clients).
    assert!(
        wait_until(Duration::from_secs(15), || {
            let now = srv.worker_pids();
            !now.is_empty() && now.is_disjoint(&old)
        }),
        "old worker still there"
    );
    (epoch, offset)
}

#[test]
fn a_graceful_reload_hands_the_history_over() {
    let mut srv = Server::builder()
        .set("history_size=100")
        .set("drain_timeout=1")
        .start();
    let (epoch, offset) = position_then_reload(&mut srv, "gr", true);
    // Pushed while the client is away, into the new worker: kept after the handed history.
    for n in 2..=3 {
        srv.push_until_fail_or_ok(format!("{}\n", line("gr", n)).as_bytes());
    }
    let (mut c2, head) = login_env(&srv, &format!("/?since={epoch}:{offset}"), "gr");
    assert_eq!(head["type"], "recovery", "{head}\n{}", srv.log());
    assert_eq!(head["recovered"], true, "{head}\n{}", srv.log());
    assert_eq!(head["epoch"], epoch.as_str(), "the epoch goes on");
    assert_eq!(n_of(&recv_json(&mut c2)), 2);
    assert_eq!(n_of(&recv_json(&mut c2)), 3);
    c2.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_plain_reload_starts_a_new_epoch_and_says_so() {
    let mut srv = Server::builder().set("history_size=100").start();
    let (epoch, offset) = position_then_reload(&mut srv, "rl", false);
    // The history went with the old worker: a new epoch, and the client is told so.
    let (mut c2, head) = login_env(&srv, &format!("/?since={epoch}:{offset}"), "rl");
    assert_eq!(head["type"], "recovery", "{head}");
    assert_eq!(head["recovered"], false, "{head}");
    assert_ne!(head["epoch"], epoch.as_str(), "{head}");
    // (Right after a reload the new worker may still hold the master's older list of workers:
    // a `fail` here delivered nothing, so the client still gets exactly one copy.)
    srv.push_until_ok(format!("{}\n", line("rl", 2)).as_bytes(), REPLY);
    assert_eq!(n_of(&recv_json(&mut c2)), 2);
}

#[test]
fn a_client_that_got_nothing_before_its_drop_still_recovers() {
    let srv = history_server(2);
    let (c1, head) = login_env(&srv, "/?envelope=1", "quiet");
    assert_eq!(head["type"], "position", "{head}");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let offset = head["offset"].as_u64().expect("offset");
    c1.close();
    // Wait for the close to be seen (a push then fails), then push while it is away.
    assert!(wait_until(REPLY, || srv
        .text_push(format!("{}\n", line("quiet", 0)).as_bytes())
        == b"fail\n"));
    let mut pushed = 1;
    loop {
        // Pushes that answered `ok` reached the closing connection; keep those that failed.
        if srv.text_push(format!("{}\n", line("quiet", pushed)).as_bytes()) == b"fail\n" {
            pushed += 1;
        }
        if pushed > 3 {
            break;
        }
    }
    let (mut c2, head) = login_env(&srv, &format!("/?since={epoch}:{offset}"), "quiet");
    assert_eq!(head["recovered"], true, "{head}");
    let got: Vec<u64> = (0..4).map(|_| n_of(&recv_json(&mut c2))).collect();
    assert_eq!(got, [0, 1, 2, 3]);
    c2.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_hundred_missed_messages_come_back_and_older_ones_are_gone() {
    let srv = history_server(1);
    let (c1, head) = login_env(&srv, "/?envelope=1", "many");
    let epoch = head["epoch"].as_str().expect("epoch").to_string();
    let start = head["offset"].as_u64().expect("offset");
    c1.close();
    assert!(wait_until(REPLY, || srv
        .text_push(format!("{}\n", line("many", 0)).as_bytes())
        == b"fail\n"));
    // 150 more in one pipelined write: the history keeps the last 100 (history_size).
    let lines: String = (1..=150)
        .map(|n| format!("{}\n", line("many", n)))
        .collect();
    let replies = srv.text_push(lines.as_bytes());
    assert_eq!(replies, "fail\n".repeat(150).as_bytes());
    // From the login's position, 51 messages are gone: refused.
    let (_c, head) = login_env(&srv, &format!("/?since={epoch}:{start}"), "many");
    assert_eq!(head["recovered"], false, "{head}");
    // From the position of message 50 (what `history` shows), the last 100 come, in order.
    let reply = srv.text_push(b"{\"cmd\":\"history\",\"uid\":\"many\"}\n");
    let h: Value = serde_json::from_slice(&reply).expect("history");
    let kept = h["messages"].as_array().expect("messages");
    assert_eq!(kept.len(), 100);
    let first = kept[0]["offset"].as_u64().expect("offset");
    let (mut c2, head) = login_env(&srv, &format!("/?since={epoch}:{}", first - 1), "many");
    assert_eq!(head["recovered"], true, "{head}");
    let got: Vec<u64> = (0..100).map(|_| n_of(&recv_json(&mut c2))).collect();
    assert_eq!(got, (51..=150).collect::<Vec<u64>>());
    c2.expect_silence(Duration::from_millis(200));
}
