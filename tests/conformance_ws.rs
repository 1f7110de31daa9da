//! RFC 6455 conformance of the WebSocket port, end to end: raw bytes written to the real
//! server, raw bytes read back. Each test names the section it holds the server to.
//!
//! * Section 4.2.1, the opening handshake: an HTTP/1.1 (or later) GET with a `Host` header and
//!   one `Sec-WebSocket-Key` whose value is the base64 of 16 bytes. Anything else is answered
//!   `400 Bad Request` and the connection is closed, counted in `rejected`.

mod common;

use common::*;

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

/// Sends `req` on a fresh connection to the WebSocket port; returns the response and whether
/// the server then closed the connection.
fn handshake(srv: &Server, req: &[u8]) -> (HttpResponse, Eof) {
    let mut c = HttpConn::connect(srv.ws);
    c.send(req).expect("write handshake");
    let r = c.read_response(REPLY);
    let (rest, how) = if r.status == 101 {
        (Vec::new(), Eof::Open)
    } else {
        c.read_until_closed(REPLY)
    };
    assert!(rest.is_empty(), "bytes after the refusal: {}", show(&rest));
    (r, how)
}

/// Asserts that `req` is refused with 400 and the connection closed.
fn assert_refused(srv: &Server, req: &[u8]) {
    let (r, how) = handshake(srv, req);
    assert_eq!(r.status, 400, "request {} got {}", show(req), r.head);
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
    let (r, _) = handshake(&srv, &upgrade("1.1", &key(GOOD_KEY), "Host: 127.0.0.1\r\n"));
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(
        r.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
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
