//! The PHP package's event helpers (`Herald\Client::subscribe`, `reply`, `ack`, `answer`) with
//! real php against a real Herald (2 workers, a push secret): `clients/php/examples/
//! chat-subscriber.php` subscribes and runs a chat between plain WebSocket clients and a
//! socket.io-client under Node; a client's message reaches the PHP subscriber, which pushes it
//! on and answers the sender through the helpers (a reply to a WebSocket, the ack of a
//! Socket.IO `emit`); after a graceful reload retires the subscriber's worker, the helper
//! subscribes again by itself and the chat goes on.
//!
//! Needs `php` (Debian `php-cli`) and `node` with scripts/node's packages: missing, the test
//! fails under CI=true and otherwise skips with a note.

mod common;
mod events_common;

use common::*;
use events_common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "php-events-secret";

/// Logs probe uids in until the PHP subscriber printed an `online` decided by every worker:
/// then every worker knows the subscriber. The probes are closed afterwards.
fn wait_known(srv: &Server, php: &Lines, tag: &str) {
    let mut workers = HashSet::new();
    let mut probes = Vec::new();
    for i in 0..50 {
        let uid = format!("{tag}{i}");
        probes.push(srv.login_acked(&uid));
        let line = php.wait("probe online", LONG, |l| {
            l.contains("\"event\":\"online\"") && l.contains(&format!("\"uid\":\"{uid}\""))
        });
        let v: Value = serde_json::from_str(&line).expect("json");
        workers.insert(v["worker"].as_u64().unwrap_or(99));
        if workers.len() >= srv.workers {
            for p in probes {
                p.close();
            }
            return;
        }
    }
    panic!("the subscriber never heard every worker");
}

/// One chat line from `from` to `to` (WebSocket clients): `to` gets it through PHP, `from` gets
/// the helper's reply.
fn chat(from: &mut Ws, from_uid: &str, to: &mut Ws, to_uid: &str, text: &str) {
    from.send_text(&format!(r#"{{"to":"{to_uid}","text":"{text}"}}"#));
    assert_eq!(to.recv_text(LONG), format!("{from_uid}: {text}"));
    assert_eq!(from.recv_text(LONG), "sent");
}

#[test]
fn the_php_package_subscribes_replies_and_acks_through_reloads() {
    if !php_ready() || !node_ready() {
        return;
    }
    let mut srv = Server::builder()
        .workers(2)
        .socketio()
        .login_reply()
        .set("events=true")
        .set(&format!("push_secret={SECRET}"))
        .set("drain_timeout=1")
        .start();
    // (The probe's online events of `wait_known` cross the mesh: it is up once they arrive.)
    let php = Lines::spawn(
        "chat-subscriber.php",
        Command::new("php").args([
            workspace_root()
                .join("clients/php/examples/chat-subscriber.php")
                .to_str()
                .expect("path"),
            "127.0.0.1",
            &srv.text.to_string(),
            SECRET,
        ]),
    );
    php.wait("subscribed", LONG, |l| l == "subscribed");
    wait_known(&srv, &php, "pk");

    // WebSocket to WebSocket, both ways: the push goes on, the sender gets the reply.
    let mut alice = srv.login_acked("alice");
    let mut bob = srv.login_acked("bob");
    chat(&mut alice, "alice", &mut bob, "bob", "hi bob");
    chat(&mut bob, "bob", &mut alice, "alice", "hi alice");
    let m = php.wait("alice's message", LONG, |l| {
        l.contains("\"event\":\"message\"") && l.contains("hi bob")
    });
    let v: Value = serde_json::from_str(&m).expect("json");
    assert_eq!(v["uid"], "alice");
    assert!(v["conn"].is_string(), "{v}");

    // Socket.IO: the `emit`'s acknowledgement is called with the helper's answer.
    let mut carol = SioChat::start(srv.socketio, "carol");
    carol.say("chat bob hi from carol");
    assert_eq!(bob.recv_text(LONG), "carol: hi from carol");
    carol.lines.wait("ack", LONG, |l| l == r#"ack ["sent"]"#);
    bob.send_text(r#"{"to":"carol","text":"hi carol"}"#);
    carol
        .lines
        .wait("new_msg", LONG, |l| l == "new_msg bob: hi carol");
    assert_eq!(bob.recv_text(LONG), "sent");
    // To somebody offline: the sender hears so.
    alice.send_text(r#"{"to":"nobody","text":"anyone?"}"#);
    assert_eq!(alice.recv_text(LONG), "offline");
    // reply() and ack() for connections that do not exist say false.
    alice.send_text(r#"{"to":"x","text":"check-gone"}"#);
    php.wait("gone", LONG, |l| l == "gone: [false,false]");

    // A graceful reload retires the subscriber's worker: the helper subscribes again alone.
    let old = srv.worker_pids();
    let out = srv.cli(&["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "reload: {}", show(&out.stderr));
    assert!(wait_until(Duration::from_secs(20), || {
        let now = srv.worker_pids();
        now.len() == 2 && now.is_disjoint(&old)
    }));
    php.wait("subscribed again", LONG, |l| l == "subscribed");
    wait_known(&srv, &php, "pr");
    let mut dave = srv.login_acked("dave");
    let mut erin = srv.login_acked("erin");
    chat(&mut dave, "dave", &mut erin, "erin", "after the reload");
    // The handler's false ends subscribe(): the script ends on its own.
    chat(&mut erin, "erin", &mut dave, "dave", "bye");
    php.wait("done", LONG, |l| l == "done");
    let mut php = php;
    let status = php.group.wait_timeout(LONG);
    assert!(
        status.is_some_and(|s| s.success()),
        "php did not exit cleanly: {status:?}"
    );
}
