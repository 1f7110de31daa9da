//! Socket.IO connection state recovery with the real socket.io-client 4.x under Node
//! (`scripts/node/sio-recover.js`): a page whose transport drops while pushes go on comes back
//! with `socket.recovered === true`, the same socket id, still logged in (it sends no new
//! `login`), and receives every `new_msg` once, in order. With one worker, and with two where
//! the reconnection lands on the worker that does not own the uid's history. Also: without a
//! history the page is never recovered (today's behaviour), and a page that comes back after
//! the history expired is not recovered but logs in again.
//!
//! Node and `scripts/node/node_modules` are required under CI (`.ci/run` installs them);
//! elsewhere the tests print a skip note when they are missing.

mod common;
mod sio_page;

use common::*;
use sio_page::{sio_v4_ready, Page};
use std::process::{Command, Stdio};
use std::time::Duration;

fn seed(uid: &str, n: u32) -> Vec<u8> {
    format!("{{\"uid\":\"{uid}\",\"n\":{n}}}\n").into_bytes()
}

/// The `n`s of the messages, in the order received.
fn numbers(msgs: &[String]) -> Vec<u64> {
    msgs.iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_str(m).expect("message JSON");
            v["n"].as_u64().expect("n")
        })
        .collect()
}

/// Per-worker figures from `GET /api/stats`: (worker id, value of `key`).
fn per_worker(srv: &Server, key: &str) -> Vec<(u64, u64)> {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
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

/// Logs the page in, then drops its transport `drops` times (or until `done` says enough)
/// while pushes go on, checking each time that it came back recovered with the same socket
/// id. Returns every message number the page received, in order, and the last one pushed.
fn drop_cycles(
    srv: &Server,
    page: &mut Page,
    uid: &str,
    drops: usize,
    mut done: impl FnMut() -> bool,
) -> (Vec<u64>, u32) {
    let mut msgs = Vec::new();
    let first = page.first_connect(&mut msgs);
    let id = first
        .split(' ')
        .find_map(|w| w.strip_prefix("id="))
        .expect("socket id")
        .to_string();
    // The login is registered once a push reaches the page.
    let mut n = 0;
    srv.push_until_ok(&seed(uid, n), REPLY);
    page.until_messages(&mut msgs, 1);
    for _ in 0..drops {
        for _ in 0..3 {
            n += 1;
            assert_eq!(srv.text_push(&seed(uid, n)), b"ok\n");
        }
        page.until_messages(&mut msgs, n as usize + 1);
        page.command("drop");
        page.wait_for("disconnect", &mut msgs);
        // Pushes while the page is away (the server may not have noticed yet: ok or fail).
        for _ in 0..5 {
            n += 1;
            let r = srv.text_push(&seed(uid, n));
            assert!(r == b"ok\n" || r == b"fail\n", "{}", show(&r));
        }
        let again = page.wait_for("connect", &mut msgs);
        assert!(again.contains("recovered=true"), "{again}\n{}", srv.log());
        assert!(
            again.ends_with(&format!("id={id}")),
            "same socket id: {again}"
        );
        // Still logged in: a push reaches it without a new login.
        n += 1;
        assert_eq!(srv.text_push(&seed(uid, n)), b"ok\n");
        page.until_messages(&mut msgs, n as usize + 1);
        if done() {
            break;
        }
    }
    page.command("quit");
    (numbers(&msgs), n)
}

#[test]
fn socketio_v4_page_recovers_after_a_drop() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder().socketio().set("history_size=100").start();
    let mut page = Page::spawn(srv.socketio, "r1");
    let (got, last) = drop_cycles(&srv, &mut page, "r1", 2, || false);
    assert_eq!(
        got,
        (0..=u64::from(last)).collect::<Vec<_>>(),
        "every message once, in order"
    );
    // The same with long-polling first (the CONNECT comes in a POST).
    let mut page = Page::spawn_with(srv.socketio, "r1p", "default");
    let (got, last) = drop_cycles(&srv, &mut page, "r1p", 2, || false);
    assert_eq!(
        got,
        (0..=u64::from(last)).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

#[test]
fn seed_page_on_socketio_2_is_unchanged_with_a_history() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder().socketio().set("history_size=100").start();
    let child = Command::new("node")
        .arg(workspace_root().join("scripts/node/sio-client.js"))
        .args([
            "v2",
            "websocket",
            &format!("http://127.0.0.1:{}", srv.socketio),
            "s2",
            "1",
            "30000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    let mut page = Page::of(child);
    let mut msgs = Vec::new();
    page.wait_for("connect", &mut msgs);
    srv.push_until_ok(b"{\"uid\":\"s2\",\"percent\":\"88%\"}\n", REPLY);
    page.until_messages(&mut msgs, 1);
    // The event carries the line as it was pushed, and nothing after it.
    assert_eq!(msgs, ["{\"uid\":\"s2\",\"percent\":\"88%\"}"]);
    page.wait_exit();
}

#[test]
fn socketio_v4_page_recovers_on_the_worker_that_does_not_own_its_history() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder()
        .workers(2)
        .socketio()
        .set("history_size=100")
        .start();
    srv.wait_mesh();
    let uid = "r2";
    let owner = u64::from(herald_ipc::history_owner(uid, 2));
    let mut page = Page::spawn(srv.socketio, uid);
    // Each reconnection lands where the kernel puts it: drop until a worker that does not own
    // the history recovered the page (each try is a coin toss; 16 tries).
    let (got, last) = drop_cycles(&srv, &mut page, uid, 16, || {
        per_worker(&srv, "recovered")
            .iter()
            .any(|&(w, r)| w != owner && r > 0)
    });
    assert!(
        per_worker(&srv, "recovered")
            .iter()
            .any(|&(w, r)| w != owner && r > 0),
        "no recovery on the other worker: {:?}",
        per_worker(&srv, "recovered")
    );
    assert_eq!(
        got,
        (0..=u64::from(last)).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

#[test]
fn without_a_history_a_page_is_never_recovered() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder().socketio().start();
    let mut page = Page::spawn(srv.socketio, "r3");
    let mut msgs = Vec::new();
    let c = page.wait_for("connect", &mut msgs);
    assert!(c.contains("recovered=false"));
    srv.push_until_ok(&seed("r3", 0), REPLY);
    page.until_messages(&mut msgs, 1);
    page.command("drop");
    page.wait_for("disconnect", &mut msgs);
    let c = page.wait_for("connect", &mut msgs);
    assert!(c.contains("recovered=false"), "{c}");
    // It logged in again, as a page does.
    srv.push_until_ok(&seed("r3", 1), REPLY);
    page.until_messages(&mut msgs, 2);
    page.command("quit");
}

#[test]
fn after_the_history_expired_a_page_logs_in_again() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder()
        .socketio()
        .set("history_size=100")
        .set("history_ttl=1")
        .start();
    let mut page = Page::spawn(srv.socketio, "r4");
    let mut msgs = Vec::new();
    page.wait_for("connect", &mut msgs);
    srv.push_until_ok(&seed("r4", 0), REPLY);
    page.until_messages(&mut msgs, 1);
    // A long drop: what is pushed meanwhile expires before the page is back.
    page.command("drop 3000");
    page.wait_for("disconnect", &mut msgs);
    let r = srv.text_push(&seed("r4", 1));
    assert!(r == b"ok\n" || r == b"fail\n");
    let c = page.wait_for("connect", &mut msgs);
    assert!(c.contains("recovered=false"), "{c}");
    // It logged in again, as a page does, and is served.
    srv.push_until_ok(&seed("r4", 2), REPLY);
    page.until_messages(&mut msgs, 2);
    assert_eq!(
        numbers(&msgs),
        [0, 2],
        "the expired message is not replayed"
    );
    page.command("quit");
}

/// A raw Engine.IO 4 WebSocket session: the open packet read, nothing sent yet.
fn raw_session(port: u16) -> Ws {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(REPLY)).ok();
    let (ws, _) = tungstenite::client(
        format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"),
        stream,
    )
    .expect("handshake");
    let mut c = Ws { ws };
    let open = c.recv_text(REPLY);
    assert!(open.starts_with("0{"), "{open}");
    c
}

/// The JSON of a `40{…}` CONNECT answer.
fn connect_answer(c: &mut Ws) -> serde_json::Value {
    loop {
        let t = c.recv_text(REPLY);
        if let Some(j) = t.strip_prefix("40") {
            return serde_json::from_str(j).expect("connect JSON");
        }
    }
}

#[test]
fn bad_recovery_requests_get_a_new_session() {
    let srv = Server::builder().socketio().set("history_size=100").start();
    // A real session, logged in, with a position.
    let mut c = raw_session(srv.socketio);
    c.send_text("40");
    let first = connect_answer(&mut c);
    let pid = first["pid"].as_str().expect("pid").to_string();
    c.send_text("42[\"login\",\"raw1\"]");
    srv.push_until_ok(&seed("raw1", 0), REPLY);
    let ev = loop {
        let t = c.recv_text(REPLY);
        if t.starts_with("42[\"new_msg\"") {
            break t;
        }
    };
    let args: serde_json::Value = serde_json::from_str(&ev[2..]).expect("event JSON");
    let offset = args[2].as_str().expect("offset last").to_string();
    let (epoch, _) = offset.split_once(':').expect("EPOCH:OFFSET");
    for auth in [
        r#"{"pid":"garbage","offset":"zz"}"#.to_string(),
        r#"{"pid":123}"#.to_string(),
        format!(r#"{{"pid":"{pid}","offset":"nonsense"}}"#),
        format!(r#"{{"pid":"{pid}","offset":"{epoch}:999999"}}"#),
        format!(r#"{{"pid":"{pid}","offset":"1:1"}}"#),
        format!(r#"{{"pid":"{}","offset":"{offset}"}}"#, "x".repeat(500)),
    ] {
        let mut r = raw_session(srv.socketio);
        r.send_text(&format!("40{auth}"));
        let a = connect_answer(&mut r);
        assert_ne!(a["pid"], pid.as_str(), "{auth}: {a}");
        assert_ne!(a["sid"], first["sid"], "{auth}: {a}");
        // Not logged in as anyone: a push to raw1 reaches only the first session.
        r.close();
    }
    // The bindings of the real session survive the bad attempts (a bad offset consumes none
    // but the pid's own), and the server still serves it.
    assert_eq!(srv.text_push(&seed("raw1", 1)), b"ok\n");
    let last = loop {
        let t = c.recv_text(REPLY);
        if t.starts_with("42[\"new_msg\"") {
            assert!(t.contains("\\\"n\\\":1"), "{t}");
            let args: serde_json::Value = serde_json::from_str(&t[2..]).expect("event JSON");
            break args[2].as_str().expect("offset").to_string();
        }
    };
    // And it still recovers, with its own position.
    c.close();
    let r = srv.text_push(&seed("raw1", 2));
    assert!(r == b"ok\n" || r == b"fail\n");
    let mut back = raw_session(srv.socketio);
    back.send_text(&format!(r#"40{{"pid":"{pid}","offset":"{last}"}}"#));
    let a = connect_answer(&mut back);
    assert_eq!(a["pid"], pid.as_str(), "{a}");
    assert_eq!(a["sid"], first["sid"], "{a}");
    let t = back.recv_text(REPLY);
    assert!(
        t.starts_with("42[\"new_msg\"") && t.contains("\\\"n\\\":2"),
        "{t}"
    );
}

#[test]
fn a_page_recovers_across_a_graceful_reload() {
    if !sio_v4_ready() {
        return;
    }
    let mut srv = Server::builder()
        .socketio()
        .set("history_size=100")
        .set("drain_timeout=1")
        .start();
    let mut page = Page::spawn(srv.socketio, "gr1");
    let mut msgs = Vec::new();
    let first = page.wait_for("connect", &mut msgs);
    let id = first
        .split(' ')
        .find_map(|w| w.strip_prefix("id="))
        .expect("socket id")
        .to_string();
    srv.push_until_ok(&seed("gr1", 0), REPLY);
    page.until_messages(&mut msgs, 1);
    let out = srv.cli(&["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "reload -g: {}", show(&out.stderr));
    // The old worker closes the page's session at its drain timeout; the page comes back to
    // the new worker, which took the history over.
    page.wait_for("disconnect", &mut msgs);
    let r = srv.text_push(&seed("gr1", 1));
    assert!(r == b"ok\n" || r == b"fail\n");
    let again = page.wait_for("connect", &mut msgs);
    assert!(again.contains("recovered=true"), "{again}\n{}", srv.log());
    assert!(again.ends_with(&format!("id={id}")), "{again}");
    srv.push_until_ok(&seed("gr1", 2), REPLY);
    page.until_messages(&mut msgs, 3);
    assert_eq!(numbers(&msgs), [0, 1, 2]);
    page.command("quit");
}

#[test]
fn offline_delivery_reaches_a_page_at_its_login() {
    if !sio_v4_ready() {
        return;
    }
    let srv = Server::builder()
        .socketio()
        .set("history_size=10")
        .set("offline_delivery=true")
        .start();
    // Pushed while nobody is there: kept.
    for n in 0..3 {
        assert_eq!(srv.text_push(&seed("off9", n)), b"fail\n");
    }
    let mut page = Page::spawn(srv.socketio, "off9");
    let mut msgs = Vec::new();
    page.wait_for("connect", &mut msgs);
    page.until_messages(&mut msgs, 3);
    // Then live, once each.
    srv.push_until_ok(&seed("off9", 3), REPLY);
    page.until_messages(&mut msgs, 4);
    assert_eq!(numbers(&msgs), [0, 1, 2, 3]);
    page.command("quit");
}
