//! RFC 6455 conformance of the WebSocket port, end to end: raw bytes written to the real
//! server, raw bytes read back. Each test names the section it holds the server to.
//!
//! * Section 4.2.1, the opening handshake: an HTTP/1.1 (or later) GET with a `Host` header and
//!   one `Sec-WebSocket-Key` whose value is the base64 of 16 bytes. Anything else is answered
//!   `400 Bad Request` and the connection is closed, counted in `rejected`.
//!   A handshake that announces a body (`Content-Length` above 0, `Transfer-Encoding`) is
//!   refused too: what follows the head is frames, never a body.
//! * Section 5.2, base framing: a 64-bit payload length with its most significant bit set is
//!   a protocol error, closed with 1002, not a size to compare with `max_frame` (1009).
//! * Sections 5.6 and 8.1: a text message that cannot be UTF-8 is closed with 1007 at the
//!   fragment that makes it impossible, not when the message ends.
//! * Herald's uid login: a first message too long to be a uid is closed with 1008
//!   `invalid uid`, as for any invalid uid.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// The key of RFC 6455's own example (section 1.3), valid.
const GOOD_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An opening handshake with the given request line version, key header lines and `Host`
/// header lines (each ending in CRLF).
fn upgrade(version: &str, key_lines: &str, host_lines: &str) -> Vec<u8> {
    format!(
        "GET /chat HTTP/{version}\r\n{host_lines}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         {key_lines}Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// One `Sec-WebSocket-Key` line.
fn key(value: &str) -> String {
    format!("Sec-WebSocket-Key: {value}\r\n")
}

/// Asserts that `req`, sent on a fresh connection to the WebSocket port, is refused with 400
/// and the connection then closed.
fn assert_refused(srv: &Server, req: &[u8]) {
    let mut c = HttpConn::connect(srv.ws);
    c.send(req).expect("write handshake");
    let r = c.read_response(REPLY);
    assert_eq!(r.status, 400, "request {} got {}", show(req), r.head);
    let (rest, how) = c.read_until_closed(REPLY);
    assert!(rest.is_empty(), "bytes after the refusal: {}", show(&rest));
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    assert_ne!(how, Eof::Open, "connection left open after {}", show(req));
}

/// Sum over workers of one Prometheus sample, read from `GET /metrics` on the HTTP port.
fn metric(srv: &Server, name: &str) -> u64 {
    let r = srv.http(&get("/metrics"));
    assert_eq!(r.status, 200, "{}", r.head);
    r.text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Section 4.2.1: the client's opening handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn key_must_be_the_base64_of_sixteen_bytes() {
    let srv = Server::start();
    let before = metric(&srv, "herald_rejected_total");
    let bad = [
        "dGhlIHNhbXBsZSBub25jZQ",       // 16 bytes, but the padding is missing
        "c2hvcnQ=",                     // "short": 5 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", // 20 bytes
        "not base64 at all!!!!!!!",     // 24 characters, not base64
    ];
    for k in bad {
        assert_refused(&srv, &upgrade("1.1", &key(k), "Host: 127.0.0.1\r\n"));
    }
    assert_eq!(
        metric(&srv, "herald_rejected_total"),
        before + bad.len() as u64,
        "each refusal is counted in rejected"
    );
    // The RFC's example key still upgrades, with the RFC's accept value.
    let mut s = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect ws port");
    s.write_all(&upgrade("1.1", &key(GOOD_KEY), "Host: 127.0.0.1\r\n"))
        .expect("write handshake");
    let (head, _) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
}

#[test]
fn two_key_headers_are_refused() {
    let srv = Server::start();
    let twice = format!("{}{}", key(GOOD_KEY), key("AAAAAAAAAAAAAAAAAAAAAA=="));
    assert_refused(&srv, &upgrade("1.1", &twice, "Host: 127.0.0.1\r\n"));
    let same_twice = format!("{}{}", key(GOOD_KEY), key(GOOD_KEY));
    assert_refused(&srv, &upgrade("1.1", &same_twice, "Host: 127.0.0.1\r\n"));
}

#[test]
fn handshake_without_host_is_refused() {
    let srv = Server::start();
    assert_refused(&srv, &upgrade("1.1", &key(GOOD_KEY), ""));
}

#[test]
fn http_1_0_handshake_is_refused() {
    let srv = Server::start();
    assert_refused(&srv, &upgrade("1.0", &key(GOOD_KEY), "Host: 127.0.0.1\r\n"));
}

// ---------------------------------------------------------------------------------------------
// Section 5.2: base framing
// ---------------------------------------------------------------------------------------------

#[test]
fn length_with_its_top_bit_set_is_closed_with_1002() {
    let srv = Server::start();
    let mut s = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect ws port");
    s.set_write_timeout(Some(REPLY)).ok();
    s.write_all(&upgrade("1.1", &key(GOOD_KEY), "Host: 127.0.0.1\r\n"))
        .expect("write handshake");
    let (head, mut after) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "no upgrade: {head}");
    // A text frame, masked, whose 64-bit length is 2^63 + 5. Only its header is sent: the
    // server must judge it from the header alone.
    s.write_all(&[
        0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 0x11, 0x22, 0x33, 0x44,
    ])
    .expect("write frame header");
    let (frame, how) = read_until_closed(&mut s, &mut after, REPLY);
    assert_ne!(how, Eof::Open, "connection left open; got {}", show(&frame));
    assert!(
        frame.len() >= 4 && frame[0] == 0x88 && usize::from(frame[1]) == frame.len() - 2,
        "expected one close frame, got {}",
        show(&frame)
    );
    let code = u16::from_be_bytes([frame[2], frame[3]]);
    assert_eq!(code, 1002, "close frame {}", show(&frame));
    // Other clients are not disturbed.
    srv.ws_connect().roundtrip();
}

#[test]
fn handshake_announcing_a_body_is_refused() {
    let srv = Server::start();
    for extra in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
        let mut req = upgrade(
            "1.1",
            &key(GOOD_KEY),
            &format!("Host: 127.0.0.1\r\n{extra}"),
        );
        // A "body" that is also a valid masked text frame: it must not be read as one.
        req.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        assert_refused(&srv, &req);
    }
}

/// Opens a WebSocket on `srv` and returns the stream and any bytes read after the 101.
fn open(srv: &Server) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect ws port");
    s.set_write_timeout(Some(REPLY)).ok();
    s.write_all(&upgrade("1.1", &key(GOOD_KEY), "Host: 127.0.0.1\r\n"))
        .expect("write handshake");
    let (head, after) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "no upgrade: {head}");
    (s, after)
}

/// A masked client frame (mask 0) with `fin`, `opcode` and `payload` (below 64 KiB).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(fin as u8) << 7 | opcode];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The close code of the one close frame the server sent before closing.
fn close_code_after(s: &mut TcpStream, after: &mut Vec<u8>) -> u16 {
    let (frame, how) = read_until_closed(s, after, REPLY);
    assert_ne!(how, Eof::Open, "connection left open; got {}", show(&frame));
    assert!(
        frame.len() >= 4 && frame[0] == 0x88,
        "expected a close frame, got {}",
        show(&frame)
    );
    u16::from_be_bytes([frame[2], frame[3]])
}

#[test]
fn impossible_text_is_closed_with_1007_at_the_fragment_that_breaks_it() {
    let srv = Server::start();
    let (mut s, mut after) = open(&srv);
    // The first fragment ends inside a three-byte character; the second cannot continue it.
    // The message is never finished: the server must not wait for its end.
    s.write_all(&client_frame(false, 0x1, b"euro \xe2\x82"))
        .expect("first fragment");
    s.write_all(&client_frame(false, 0x0, b"x and more"))
        .expect("second fragment");
    assert_eq!(close_code_after(&mut s, &mut after), 1007);
}

#[test]
fn a_first_message_too_long_for_a_uid_is_closed_with_1008() {
    let srv = Server::start();
    let (mut s, mut after) = open(&srv);
    s.write_all(&client_frame(true, 0x1, &[b'u'; 5000]))
        .expect("long first message");
    assert_eq!(close_code_after(&mut s, &mut after), 1008);
}

/// Reads a response head (through its blank line) from `s`; returns it and any bytes that
/// came after it in the same reads.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let deadline = Instant::now() + REPLY;
    let mut buf = Vec::new();
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no response head; got {}", show(&buf));
        s.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => panic!("closed before a response head; got {}", show(&buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the response head: {e}"),
        }
    }
}
