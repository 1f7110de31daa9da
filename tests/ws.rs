//! WebSocket port, end to end (issue 2, point 1): seed-mode login (the first text frame is the
//! uid), several connections per uid, removal on close, ping/pong, the close handshake,
//! `login_reply`, and `client_relay` (both forms, and off by default).
//!
//! Synchronisation: tests that need the default configuration (no login reply) push with
//! `push_until_ok`, because the server registers a login asynchronously and a push racing it
//! may legitimately answer `fail` (which delivers nothing, so the client still gets exactly one
//! copy). Every other test runs with `login_reply=true` and waits for the reply, after which
//! the uid is registered.

mod common;

use common::*;
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

const SEED_LINE: &[u8] = b"{\"uid\":\"uid1\",\"percent\":\"88%\"}\n";
const SEED_FRAME: &str = "{\"uid\":\"uid1\",\"percent\":\"88%\"}";

#[test]
fn seed_flow_client_receives_the_exact_line() {
    // Default configuration, as in seed 000: no login reply, so push until `ok`.
    let srv = Server::start();
    let mut client = srv.login("uid1");
    srv.push_until_ok(SEED_LINE, REPLY);
    assert_eq!(client.recv_text(REPLY), SEED_FRAME);
    // Exactly one copy, and no login reply by default.
    client.expect_silence(Duration::from_millis(300));
}

#[test]
fn push_to_offline_uid_fails() {
    let srv = Server::start();
    assert_eq!(
        srv.text_push(b"{\"uid\":\"nobody\",\"percent\":\"1%\"}\n"),
        b"fail\n"
    );
}

#[test]
fn every_connection_of_a_uid_receives() {
    let srv = Server::builder().login_reply().start();
    let mut tabs: Vec<Ws> = (0..3).map(|_| srv.login_acked("multi")).collect();
    let mut other = srv.login_acked("someone-else");
    assert_eq!(srv.text_push(b"{\"uid\":\"multi\",\"n\":1}\n"), b"ok\n");
    for tab in &mut tabs {
        assert_eq!(tab.recv_text(REPLY), "{\"uid\":\"multi\",\"n\":1}");
    }
    other.expect_silence(Duration::from_millis(200));
    // One tab closing leaves the others registered.
    tabs.pop().expect("tab").close();
    assert_eq!(srv.text_push(b"{\"uid\":\"multi\",\"n\":2}\n"), b"ok\n");
    for tab in &mut tabs {
        assert_eq!(tab.recv_text(REPLY), "{\"uid\":\"multi\",\"n\":2}");
    }
}

/// Pushes `line` until it answers `fail` (the close is processed asynchronously); panics if it
/// still answers `ok` after 3 s.
fn assert_eventually_fails(srv: &Server, line: &[u8]) {
    let ok = wait_until(Duration::from_secs(3), || {
        let r = srv.text_push(line);
        assert!(r == b"ok\n" || r == b"fail\n", "reply {}", show(&r));
        r == b"fail\n"
    });
    assert!(ok, "uid still registered 3 s after its connection closed");
}

#[test]
fn close_handshake_removes_uid_from_registry() {
    let srv = Server::builder().login_reply().start();
    let c = srv.login_acked("leaver");
    c.close();
    assert_eventually_fails(&srv, b"{\"uid\":\"leaver\"}\n");
}

#[test]
fn abrupt_disconnect_removes_uid_from_registry() {
    let srv = Server::builder().login_reply().start();
    let c = srv.login_acked("dropper");
    drop(c); // TCP close without a close frame
    assert_eventually_fails(&srv, b"{\"uid\":\"dropper\"}\n");
    // And the server still serves others.
    let mut other = srv.login_acked("stayer");
    assert_eq!(srv.text_push(b"{\"uid\":\"stayer\"}\n"), b"ok\n");
    assert_eq!(other.recv_text(REPLY), "{\"uid\":\"stayer\"}");
}

#[test]
fn ping_is_answered_with_pong() {
    let srv = Server::builder().login_reply().start();
    // Before login...
    let mut c = srv.ws_connect();
    c.ws.send(Message::Ping(b"before-login".to_vec().into()))
        .expect("ping");
    match c.recv(REPLY) {
        Ok(Message::Pong(p)) => assert_eq!(p.as_ref(), b"before-login"),
        other => panic!("expected pong, got {other:?}"),
    }
    // ...and after.
    let mut c = srv.login_acked("pinger");
    c.ws.send(Message::Ping(b"hb-123".to_vec().into()))
        .expect("ping");
    match c.recv(REPLY) {
        Ok(Message::Pong(p)) => assert_eq!(p.as_ref(), b"hb-123"),
        other => panic!("expected pong, got {other:?}"),
    }
    // A ping is not a login or a message: the uid still gets pushes.
    assert_eq!(srv.text_push(b"{\"uid\":\"pinger\"}\n"), b"ok\n");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"pinger\"}");
}

#[test]
fn close_handshake_is_answered_and_tcp_closed() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("closer");
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .expect("send close");
    // The server answers with a Close frame (echoing 1000, or empty), then closes TCP.
    let mut got_close = None;
    loop {
        match c.recv(REPLY) {
            Ok(Message::Close(frame)) => {
                got_close = Some(frame);
            }
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected {other:?} during close"),
            Err(Ended::Timeout) => panic!("server neither answered Close nor closed TCP"),
            // After the Close reply tungstenite reports the connection as closed.
            Err(Ended::Closed(_)) => break,
        }
    }
    let frame = got_close.expect("server's Close frame");
    if let Some(f) = frame {
        assert_eq!(f.code, CloseCode::Normal, "close code echoed");
    }
    // The server closes the TCP connection (read sees EOF, not a timeout).
    let mut stream = c.ws.get_ref().try_clone().expect("clone");
    let (_, how) = read_until_closed(&mut stream, &mut Vec::new(), REPLY);
    assert_ne!(
        how,
        Eof::Open,
        "server kept TCP open after the close handshake"
    );
}

#[test]
fn login_reply_sends_seed_text() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login("alice");
    assert_eq!(c.recv_text(REPLY), "login success, your uid is alice");
    // Only the first frame is a login: a second frame is not answered again.
    c.send_text("hello");
    c.roundtrip();
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn no_login_reply_by_default() {
    let srv = Server::start();
    let mut c = srv.login("quiet");
    srv.push_until_ok(b"{\"uid\":\"quiet\",\"m\":\"first\"}\n", REPLY);
    // The first frame the client sees is the push, not a login reply.
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"quiet\",\"m\":\"first\"}");
}

#[test]
fn client_relay_to_one_uid() {
    let srv = Server::builder()
        .login_reply()
        .set("client_relay=true")
        .start();
    let mut alice = srv.login_acked("alice");
    let mut bob = srv.login_acked("bob");
    let mut carol = srv.login_acked("carol");
    alice.send_text("bob:hello bob");
    assert_eq!(bob.recv_text(REPLY), "hello bob");
    alice.roundtrip();
    alice.expect_silence(Duration::from_millis(200));
    carol.expect_silence(Duration::from_millis(50));
}

#[test]
fn client_relay_to_all() {
    let srv = Server::builder()
        .login_reply()
        .set("client_relay=true")
        .start();
    let mut alice = srv.login_acked("alice");
    let mut bob = srv.login_acked("bob");
    let mut bob2 = srv.login_acked("bob");
    // A connection that never logged in is not part of "all".
    let mut anon = srv.ws_connect();
    alice.send_text("all:hi everyone");
    assert_eq!(alice.recv_text(REPLY), "hi everyone");
    assert_eq!(bob.recv_text(REPLY), "hi everyone");
    assert_eq!(bob2.recv_text(REPLY), "hi everyone");
    anon.roundtrip();
    anon.expect_silence(Duration::from_millis(100));
}

#[test]
fn client_relay_is_off_by_default() {
    let srv = Server::builder().login_reply().start();
    let mut alice = srv.login_acked("alice");
    let mut bob = srv.login_acked("bob");
    alice.send_text("bob:sneaky");
    alice.send_text("all:sneaky");
    // The pong proves the server has read both frames above.
    alice.roundtrip();
    assert_eq!(
        srv.text_push(b"{\"uid\":\"bob\",\"m\":\"marker\"}\n"),
        b"ok\n"
    );
    // Bob's first frame is the marker: the relayed frames were not delivered.
    assert_eq!(bob.recv_text(REPLY), "{\"uid\":\"bob\",\"m\":\"marker\"}");
    alice.expect_silence(Duration::from_millis(100));
}
