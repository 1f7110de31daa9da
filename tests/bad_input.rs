//! Bad input, end to end (issue 2, "Tests"): an over-long text line (2 MiB, and past a small
//! `max_line`), binary garbage on each port, and clients that vanish mid-frame, mid-handshake
//! or mid-line. Each test then proves the server still serves other clients: a logged-in
//! WebSocket client receives a push made on a fresh text connection.
//!
//! Clients log in with `login_reply=true` and wait for the reply (deterministic registration).

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// Writes `bytes` in pieces, stopping quietly at the first error (the server may close first).
fn write_until_error(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_write_timeout(Some(REPLY)).ok();
    for piece in bytes.chunks(64 * 1024) {
        if stream.write_all(piece).is_err() {
            return;
        }
    }
}

#[test]
fn two_mib_line_closes_that_connection_only() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("watcher");
    // A long-lived backend connection that must survive its neighbour's abuse.
    let mut good = TextConn::connect(srv.text);
    good.send(b"{\"uid\":\"watcher\",\"n\":0}\n");
    assert_eq!(good.read_lines(1, REPLY), b"ok\n");
    assert_eq!(client.recv_text(REPLY), "{\"uid\":\"watcher\",\"n\":0}");

    let mut bad = TextConn::connect(srv.text);
    let mut line = b"{\"uid\":\"watcher\",\"pad\":\"".to_vec();
    line.resize(2 * 1024 * 1024, b'a');
    line.extend_from_slice(b"\"}\n");
    write_until_error(&mut bad.stream, &line);
    let (got, how) = bad.read_until_closed(REPLY);
    assert_ne!(how, Eof::Open, "a 2 MiB line did not close the connection");
    assert!(
        got.is_empty(),
        "expected no reply before the close, got {}",
        show(&got)
    );
    // The over-long line was not delivered.
    client.expect_silence(Duration::from_millis(200));
    // The other backend connection and new ones still work.
    good.send(b"{\"uid\":\"watcher\",\"n\":1}\n");
    assert_eq!(good.read_lines(1, REPLY), b"ok\n");
    assert_eq!(client.recv_text(REPLY), "{\"uid\":\"watcher\",\"n\":1}");
    srv.still_serves(&mut client, "watcher", 2);
}

#[test]
fn two_mib_without_any_newline_closes_too() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("w");
    let mut bad = TextConn::connect(srv.text);
    write_until_error(&mut bad.stream, &vec![b'x'; 2 * 1024 * 1024]);
    let (got, how) = bad.read_until_closed(REPLY);
    assert_ne!(
        how,
        Eof::Open,
        "2 MiB without newline did not close the connection"
    );
    assert!(got.is_empty(), "{}", show(&got));
    srv.still_serves(&mut client, "w", 1);
}

#[test]
fn max_line_setting_is_honoured() {
    let srv = Server::builder().login_reply().set("max_line=100").start();
    let mut client = srv.login_acked("m");
    // Well under the limit: fine.
    let mut conn = TextConn::connect(srv.text);
    conn.send(b"{\"uid\":\"m\",\"s\":\"short\"}\n");
    assert_eq!(conn.read_lines(1, REPLY), b"ok\n");
    assert_eq!(client.recv_text(REPLY), "{\"uid\":\"m\",\"s\":\"short\"}");
    // Well over it: the connection closes, with no reply.
    let long = format!("{{\"uid\":\"m\",\"s\":\"{}\"}}\n", "z".repeat(300));
    conn.send(long.as_bytes());
    let (got, how) = conn.read_until_closed(REPLY);
    assert_ne!(
        how,
        Eof::Open,
        "a 300-byte line with max_line=100 did not close"
    );
    assert!(got.is_empty(), "{}", show(&got));
    client.expect_silence(Duration::from_millis(100));
    srv.still_serves(&mut client, "m", 1);
}

/// Deterministic pseudo-random bytes (xorshift), with every byte value represented.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out: Vec<u8> = (0..=255u8).collect();
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out.truncate(len);
    out
}

#[test]
fn binary_garbage_on_text_port_fails_each_line() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("g");
    let mut conn = TextConn::connect(srv.text);
    // Garbage without newlines, then exactly three line ends: three `fail` replies.
    let mut bytes: Vec<u8> = garbage(3000, 7)
        .into_iter()
        .filter(|b| *b != b'\n')
        .collect();
    bytes.push(b'\n');
    bytes.extend(garbage(500, 11).into_iter().filter(|b| *b != b'\n'));
    bytes.extend_from_slice(b"\r\n\xff\xfe\x00\x00{\"uid\":\"g\"}\n");
    conn.send(&bytes);
    assert_eq!(conn.read_lines(3, REPLY), b"fail\nfail\nfail\n");
    // The same connection still works.
    conn.send(b"{\"uid\":\"g\",\"after\":\"garbage\"}\n");
    assert_eq!(conn.read_lines(1, REPLY), b"ok\n");
    assert_eq!(
        client.recv_text(REPLY),
        "{\"uid\":\"g\",\"after\":\"garbage\"}"
    );
    srv.still_serves(&mut client, "g", 1);
}

#[test]
fn binary_garbage_on_ws_port_closes_that_connection() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("g");
    // Garbage instead of an HTTP upgrade request.
    let mut raw = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect");
    let mut junk = garbage(4096, 3);
    junk.extend_from_slice(b"\r\n\r\n");
    write_until_error(&mut raw, &junk);
    let (got, how) = read_until_closed(&mut raw, &mut Vec::new(), REPLY);
    assert_ne!(
        how,
        Eof::Open,
        "garbage handshake left open; got {}",
        show(&got)
    );
    if !got.is_empty() {
        assert!(
            got.starts_with(b"HTTP/1.1 4"),
            "answer to a garbage handshake: {}",
            show(&got)
        );
    }
    srv.still_serves(&mut client, "g", 1);

    // Garbage after a good handshake and login (not valid frames: unmasked, reserved opcode).
    let mut victim = srv.login_acked("victim");
    let mut stream = victim.tcp().try_clone().expect("clone");
    write_until_error(&mut stream, &garbage(2048, 5));
    assert!(
        victim.closed_within(REPLY),
        "invalid frames did not close the connection"
    );
    srv.still_serves(&mut client, "g", 2);
    // The victim is gone from the registry.
    assert!(
        wait_until(Duration::from_secs(3), || srv
            .text_push(b"{\"uid\":\"victim\"}\n")
            == b"fail\n"),
        "closed connection still registered"
    );
}

#[test]
fn binary_garbage_on_http_port_is_400() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("g");
    // A TLS ClientHello's first bytes: a port without TLS answers with a TLS alert
    // (`handshake_failure`), which a TLS client reports, and closes (see tests/tls.rs).
    let tls_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut raw = TcpStream::connect(("127.0.0.1", srv.http)).expect("connect");
    let _ = raw.write_all(&tls_hello);
    let (got, how) = read_until_closed(&mut raw, &mut Vec::new(), REPLY);
    assert!(got.starts_with(&[0x15, 0x03]), "{}", show(&got));
    assert_ne!(how, Eof::Open, "connection kept open after a TLS alert");
    // Other binary garbage: 400.
    let mut conn = HttpConn::connect(srv.http);
    let mut junk = vec![
        0x00, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    junk.extend(garbage(1000, 9));
    junk.extend_from_slice(b"\r\n\r\n");
    let _ = conn.send(&junk);
    let r = conn.read_response(REPLY);
    assert_eq!(r.status, 400, "{}", r.head);
    let (_, how) = conn.read_until_closed(REPLY);
    assert_ne!(
        how,
        Eof::Open,
        "connection kept open after a 400 for garbage"
    );
    srv.still_serves(&mut client, "g", 1);
    assert_eq!(srv.http(&get("/?type=publish&to=g&content=y")).text(), "ok");
    assert_eq!(client.recv_text(REPLY), "y");
}

#[test]
fn ws_client_disconnecting_mid_frame() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("stay");
    let half = srv.login_acked("half");
    let mut stream = half.tcp().try_clone().expect("clone");
    // A masked text frame announcing 100 payload bytes, of which only 10 are sent.
    let mut frame = vec![0x81, 0x80 | 100, 1, 2, 3, 4];
    frame.extend_from_slice(&[b'a' ^ 1; 10]);
    stream.write_all(&frame).expect("write partial frame");
    stream.flush().ok();
    // Let the partial frame arrive alone, then vanish.
    std::thread::sleep(Duration::from_millis(50));
    drop(stream);
    drop(half);
    srv.still_serves(&mut client, "stay", 1);
    assert!(
        wait_until(Duration::from_secs(3), || srv
            .text_push(b"{\"uid\":\"half\"}\n")
            == b"fail\n"),
        "client that vanished mid-frame still registered"
    );

    // Vanishing in the middle of the opening handshake.
    let mut raw = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnec")
        .expect("write half handshake");
    std::thread::sleep(Duration::from_millis(50));
    drop(raw);
    // Vanishing before sending the uid (connected, never logged in).
    let anon = srv.ws_connect();
    drop(anon);
    srv.still_serves(&mut client, "stay", 2);
    let mut newcomer = srv.login_acked("newcomer");
    srv.still_serves(&mut newcomer, "newcomer", 3);
}

#[test]
fn text_client_disconnecting_mid_line() {
    let srv = Server::builder().login_reply().start();
    let mut client = srv.login_acked("t");
    let mut conn = TextConn::connect(srv.text);
    conn.send(b"{\"uid\":\"t\",\"unfinished\":");
    std::thread::sleep(Duration::from_millis(50));
    drop(conn);
    // The half line was never a push.
    client.expect_silence(Duration::from_millis(200));
    // A backend that closes right after writing a full line still gets it pushed.
    let mut quick = TextConn::connect(srv.text);
    quick.send(b"{\"uid\":\"t\",\"then\":\"gone\"}\n");
    drop(quick);
    assert_eq!(client.recv_text(REPLY), "{\"uid\":\"t\",\"then\":\"gone\"}");
    srv.still_serves(&mut client, "t", 1);
}
