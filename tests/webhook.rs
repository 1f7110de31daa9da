//! The webhook: events POSTed to a real PHP endpoint (`php -S` serving
//! `scripts/php/webhook.php`), which checks the HMAC signature, records every event in a file
//! the test reads, and answers with replies, Socket.IO acks and pushes; retries while the
//! endpoint is down, with no loss within `webhook_queue` and counted drops beyond it.
//!
//! Without php (and CI unset) these tests print a skip note; the Socket.IO part needs node.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);
const SECRET: &str = "webhook-test-secret";

fn php_ready() -> bool {
    require("php (Debian package php-cli)", have_program("php"))
}

/// `php -S 127.0.0.1:PORT scripts/php/webhook.php`, recording into `log`.
fn endpoint(port: u16, log: &Path) -> Group {
    let mut cmd = Command::new("php");
    cmd.args([
        "-S",
        &format!("127.0.0.1:{port}"),
        workspace_root()
            .join("scripts/php/webhook.php")
            .to_str()
            .expect("path"),
    ])
    .env("HERALD_WEBHOOK_SECRET", SECRET)
    .env("HERALD_EVENTS_LOG", log)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let g = Group::spawn(&mut cmd).expect("spawn php -S");
    assert!(
        wait_until(LONG, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "php -S did not listen"
    );
    g
}

/// The events the endpoint recorded so far.
fn recorded(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the endpoint recorded an event satisfying `f`.
fn wait_recorded(log: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(v) = recorded(log).into_iter().find(|v| f(v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} recorded: {:?}",
            recorded(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stat(srv: &Server, key: &str) -> u64 {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let v: Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|r| r[key].as_u64()).sum())
        .unwrap_or(0)
}

fn log_path(srv: &Server) -> PathBuf {
    srv.dir.path.join("events.log")
}

#[test]
fn webhook_runs_a_chat_with_signed_batches_replies_acks_and_pushes() {
    if !php_ready() {
        return;
    }
    let port = free_port();
    let srv = Server::builder()
        .workers(2)
        .socketio()
        .login_reply()
        .set(&format!("webhook_url=http://127.0.0.1:{port}/herald.php"))
        .set(&format!("webhook_secret={SECRET}"))
        .start();
    let log = log_path(&srv);
    let _php = endpoint(port, &log);
    srv.wait_mesh();

    // A forged body is refused by the script (and recorded as such).
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let body = r#"{"events":[]}"#;
    write!(
        s,
        "POST /herald.php HTTP/1.1\r\nHost: x\r\nX-Herald-Signature: sha256=00\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let mut bob = srv.login_acked("bob");
    let mut alice = srv.login_acked("alice");
    let login = wait_recorded(&log, "alice's login", |v| {
        v["event"] == "login" && v["uid"] == "alice"
    });
    assert_eq!(login["protocol"], "websocket");
    wait_recorded(&log, "alice online", |v| {
        v["event"] == "online" && v["uid"] == "alice"
    });
    alice.send_text(r#"{"to":"bob","text":"hi bob"}"#);
    assert_eq!(bob.recv_text(LONG), "alice: hi bob");
    assert_eq!(alice.recv_text(LONG), "sent");

    if have_program("node")
        && workspace_root()
            .join("scripts/node/node_modules/socket.io-client-v4/package.json")
            .exists()
    {
        let mut cmd = Command::new("node");
        cmd.arg(workspace_root().join("scripts/node/sio-chat.js"))
            .args(["v4", &format!("http://127.0.0.1:{}", srv.socketio), "carol"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut g = Group::spawn(&mut cmd).expect("node");
        let mut stdin = g.child.stdin.take().expect("stdin");
        let out = g.child.stdout.take().expect("stdout");
        let rx = lines_of(out);
        let wait = |want: &str| {
            let deadline = Instant::now() + LONG;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(l) if l == want => return,
                    Ok(_) => {}
                    Err(_) => panic!("node: no `{want}`"),
                }
            }
        };
        wait("logged_in");
        writeln!(stdin, "chat alice from carol").expect("stdin");
        assert_eq!(alice.recv_text(LONG), "carol: from carol");
        wait(r#"ack ["sent"]"#);
        alice.send_text(r#"{"to":"carol","text":"back"}"#);
        wait("new_msg alice: back");
        let m = wait_recorded(&log, "carol's chat", |v| {
            v["event"] == "message" && v["uid"] == "carol"
        });
        assert_eq!(m["name"], "chat");
        assert!(m["ack"].is_u64());
    } else {
        require("node and scripts/node/node_modules", false);
    }

    alice.close();
    let out = wait_recorded(&log, "alice's logout", |v| {
        v["event"] == "logout" && v["uid"] == "alice"
    });
    assert_eq!(out["code"], 1000);
    wait_recorded(&log, "alice offline", |v| {
        v["event"] == "offline" && v["uid"] == "alice"
    });
    // Only the forged POST failed its signature check; every event has a unique id.
    let all = recorded(&log);
    assert_eq!(all.iter().filter(|v| v["bad_signature"] == true).count(), 1);
    let ids: Vec<&str> = all.iter().filter_map(|v| v["id"].as_str()).collect();
    let unique: HashSet<&&str> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len());
    assert_eq!(stat(&srv, "webhook_dropped"), 0);

    // A stop closes bob with 1001; his logout is POSTed before the workers exit.
    let mut srv = srv;
    let out = srv.cli(&["stop"], Duration::from_secs(30));
    assert!(out.status.success(), "stop: {}", show(&out.stderr));
    let out = wait_recorded(&log, "bob's logout at the stop", |v| {
        v["event"] == "logout" && v["uid"] == "bob"
    });
    assert_eq!(out["code"], 1001);
    assert_eq!(out["reason"], "server stopping");
    drop(bob);
}

#[test]
fn webhook_down_then_up_loses_nothing_within_the_queue_and_counts_drops_beyond() {
    if !php_ready() {
        return;
    }
    let port = free_port();
    let srv = Server::builder()
        .login_reply()
        .set(&format!("webhook_url=http://127.0.0.1:{port}/herald.php"))
        .set(&format!("webhook_secret={SECRET}"))
        .set("webhook_events=[\"message\"]")
        .set("webhook_queue=50")
        .set("webhook_batch=10")
        .start();
    let log = log_path(&srv);
    let mut c = srv.login_acked("u1");
    // Down: 40 messages wait (within the queue of 50), retried with back-off.
    for i in 0..40 {
        c.send_text(&format!("a{i}"));
    }
    c.roundtrip();
    assert!(wait_until(LONG, || stat(&srv, "webhook_retries") >= 2));
    assert!(srv.log().contains("webhook: POST to"), "{}", srv.log());
    // Up: every one arrives, once, in order.
    let php = endpoint(port, &log);
    assert!(
        wait_until(LONG, || recorded(&log).len() >= 40),
        "{:?}",
        recorded(&log)
    );
    let got: Vec<String> = recorded(&log)
        .iter()
        .filter_map(|v| v["data"].as_str().map(str::to_string))
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(stat(&srv, "webhook_sent"), 40);
    assert_eq!(stat(&srv, "webhook_dropped"), 0);

    // Down again, and 200 messages: the queue keeps 50 (plus a batch in flight), the rest are
    // dropped and counted, and the worker says so once.
    drop(php);
    assert!(wait_until(LONG, || TcpStream::connect(("127.0.0.1", port)).is_err()));
    for i in 0..200 {
        c.send_text(&format!("b{i}"));
    }
    c.roundtrip();
    assert!(wait_until(LONG, || stat(&srv, "webhook_dropped") >= 140));
    let dropped = stat(&srv, "webhook_dropped");
    assert!(dropped <= 150, "{dropped}");
    assert!(srv.log().contains("webhook queue full"), "{}", srv.log());
    // Pushes went on meanwhile.
    assert_eq!(srv.text_push(b"{\"uid\":\"u1\",\"x\":1}\n"), b"ok\n");
    let _php = endpoint(port, &log);
    let kept = 200 - dropped as usize;
    assert!(
        wait_until(LONG, || recorded(&log).len() >= 40 + kept),
        "{} of {} recorded",
        recorded(&log).len(),
        40 + kept
    );
    let ids: Vec<String> = recorded(&log)
        .iter()
        .filter_map(|v| v["id"].as_str().map(str::to_string))
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "an event recorded twice");
    assert!(srv.log().contains("answers again"), "{}", srv.log());
}
