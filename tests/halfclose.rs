//! Half-close, end to end: a backend writes its requests, then `shutdown(SHUT_WR)` (FIN), and
//! reads. Reading the end of the peer's input ends *reading*, not the connection: every line
//! or request already read is answered, also when its push waits for sibling workers, and then
//! the server closes (RFC 9112 §9.6: a server reading EOF still answers what it read). A
//! WebSocket's FIN closes the connection as before, after a close frame already queued.
//!
//! The servers run 3 workers with one logged-in client held by each (found through `/proc`,
//! never guessed), so a `fail` or an API count waits for every sibling, and an `ok` to a uid on
//! another worker waits for that sibling's `Delivered`. Every shape is tried 20 times on fresh
//! connections; the failures are counted, then asserted to be zero.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// Tries of each shape.
const TRIES: usize = 20;
/// Lines of the pipelined shape.
const LINES: usize = 10_000;

/// A server whose every worker holds one logged-in client.
struct Placed {
    srv: Server,
    /// (worker pid, uid, client), one per worker.
    clients: Vec<(u32, String, Ws)>,
    /// Clients that landed on a worker that already had one: kept open, unused.
    _spare: Vec<Ws>,
}

impl Placed {
    fn start(builder: Builder) -> Placed {
        let srv = builder.workers(3).login_reply().start();
        srv.wait_mesh();
        let pids = srv.worker_pids();
        let (mut clients, mut spare) = (Vec::new(), Vec::new());
        for i in 0.. {
            if clients.len() == pids.len() {
                break;
            }
            assert!(i < 300, "no client landed on some worker after 300 logins");
            let uid = format!("hc{i}");
            let c = srv.login_acked(&uid);
            let owner = Owners::snapshot(&pids)
                .owner(c.tcp())
                .expect("a logged-in client is held by a worker");
            if clients.iter().any(|(p, _, _)| *p == owner) {
                spare.push(c);
            } else {
                clients.push((owner, uid, c));
            }
        }
        Placed {
            srv,
            clients,
            _spare: spare,
        }
    }

    /// The worker holding the server side of `s` (waits for the accept).
    fn owner(&self, s: &TcpStream) -> u32 {
        let pids: BTreeSet<u32> = self.clients.iter().map(|(p, _, _)| *p).collect();
        let mut owner = None;
        assert!(
            wait_until(REPLY, || {
                owner = Owners::snapshot(&pids).owner(s);
                owner.is_some()
            }),
            "connection not accepted by any worker"
        );
        owner.expect("owner")
    }

    /// The index of a client held by a worker other than `pid`.
    fn remote(&self, pid: u32) -> usize {
        self.clients
            .iter()
            .position(|(p, _, _)| *p != pid)
            .expect("a client on another worker")
    }
}

/// Connects to `port`, writes `bytes`, then half-closes.
fn send_then_fin(port: u16, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    s.write_all(bytes).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
    s
}

/// Reads everything until the server closes (or `limit`).
fn answers(mut s: TcpStream, limit: Duration) -> (Vec<u8>, Eof) {
    let mut buf = Vec::new();
    read_until_closed(&mut s, &mut buf, limit)
}

/// Asserts that no try failed; each failure says what came instead.
fn assert_all_answered(shape: &str, tries: usize, failures: &[String]) {
    eprintln!(
        "{shape}: {} of {tries} tries answered in full",
        tries - failures.len()
    );
    assert!(
        failures.is_empty(),
        "{shape}: {} of {tries} tries not answered, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

#[test]
fn text_line_then_fin_is_answered_after_every_sibling() {
    let p = Placed::start(Server::builder());
    let mut failures = Vec::new();
    for t in 0..TRIES {
        let s = send_then_fin(p.srv.text, b"{\"uid\":\"nobody\"}\n");
        let (got, how) = answers(s, REPLY);
        if got != b"fail\n" || how != Eof::Fin {
            failures.push(format!("try {t}: {} then {how:?}", show(&got)));
        }
    }
    assert_all_answered("{\"uid\":\"nobody\"} + FIN", TRIES, &failures);
}

#[test]
fn ten_thousand_pipelined_lines_then_fin_get_ten_thousand_replies_in_order() {
    let mut p = Placed::start(Server::builder());
    let mut failures = Vec::new();
    let mut replies_total = 0;
    for t in 0..TRIES {
        let mut s = TcpStream::connect(("127.0.0.1", p.srv.text)).expect("connect");
        s.set_nodelay(true).ok();
        // Even lines go to a uid on another worker (`ok` once that sibling answers), odd
        // lines to nobody (`fail` once every sibling answered).
        let r = p.remote(p.owner(&s));
        let uid = p.clients[r].1.clone();
        let mut lines = Vec::with_capacity(LINES * 40);
        let mut expected = Vec::with_capacity(LINES * 5);
        for i in 0..LINES {
            if i % 2 == 0 {
                lines.extend_from_slice(format!("{{\"uid\":\"{uid}\",\"n\":{i}}}\n").as_bytes());
                expected.extend_from_slice(b"ok\n");
            } else {
                lines.extend_from_slice(format!("{{\"uid\":\"nobody\",\"n\":{i}}}\n").as_bytes());
                expected.extend_from_slice(b"fail\n");
            }
        }
        s.write_all(&lines).expect("write lines");
        s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
        let (got, how) = answers(s, Duration::from_secs(60));
        let n = got.iter().filter(|b| **b == b'\n').count();
        replies_total += n;
        if got != expected || how != Eof::Fin {
            let first_diff = got.iter().zip(&expected).position(|(a, b)| a != b);
            failures.push(format!(
                "try {t}: {n} replies of {LINES}, then {how:?}; first difference at byte {first_diff:?}"
            ));
        }
        // The sibling delivered every even line, in order.
        let client = &mut p.clients[r].2;
        for i in (0..LINES).step_by(2) {
            assert_eq!(
                client.recv_text(REPLY),
                format!("{{\"uid\":\"{uid}\",\"n\":{i}}}"),
                "try {t}: delivery of line {i}"
            );
        }
    }
    eprintln!(
        "{LINES} pipelined lines + FIN: {replies_total} replies of {} lines over {TRIES} tries",
        LINES * TRIES
    );
    assert_all_answered("10,000 pipelined lines + FIN", TRIES, &failures);
}

#[test]
fn http_requests_then_fin_are_answered() {
    let p = Placed::start(Server::builder());
    let port = p.srv.http;
    // HTTP/1.0, the seed's publish to an offline uid: `offline` once every sibling answered.
    let mut failures = Vec::new();
    for t in 0..TRIES {
        let s = send_then_fin(
            port,
            b"GET /?type=publish&to=nobody&content=x HTTP/1.0\r\n\r\n",
        );
        let (got, how) = answers(s, REPLY);
        let text = String::from_utf8_lossy(&got);
        if !(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\noffline"))
            || how != Eof::Fin
        {
            failures.push(format!("try {t}: {} then {how:?}", show(&got)));
        }
    }
    assert_all_answered("HTTP/1.0 publish + FIN", TRIES, &failures);

    // The JSON API: a count, which waits for every worker.
    let uid = &p.clients[0].1;
    let body = format!("{{\"to\":\"{uid}\",\"data\":\"x\"}}");
    let req = format!(
        "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut failures = Vec::new();
    for t in 0..TRIES {
        let s = send_then_fin(port, req.as_bytes());
        let (got, how) = answers(s, REPLY);
        let text = String::from_utf8_lossy(&got);
        if !(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\n{\"delivered\":1}\n"))
            || how != Eof::Fin
        {
            failures.push(format!("try {t}: {} then {how:?}", show(&got)));
        }
    }
    assert_all_answered("POST /api/push + FIN", TRIES, &failures);

    // Two pipelined HTTP/1.1 requests, the first waiting for the siblings: both answered.
    let two = b"GET /?type=publish&to=nobody&content=1 HTTP/1.1\r\nHost: x\r\n\r\n\
                GET /?type=other HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut failures = Vec::new();
    for t in 0..TRIES {
        let s = send_then_fin(port, two);
        let (got, how) = answers(s, REPLY);
        let text = String::from_utf8_lossy(&got);
        let bodies: Vec<&str> = text
            .split("HTTP/1.1 200 ")
            .skip(1)
            .filter_map(|r| r.split("\r\n\r\n").nth(1))
            .collect();
        if bodies != ["offline", "fail"] || how != Eof::Fin {
            failures.push(format!("try {t}: {} then {how:?}", show(&got)));
        }
    }
    assert_all_answered("two pipelined HTTP/1.1 requests + FIN", TRIES, &failures);
}

#[test]
fn socketio_handshake_then_fin_is_answered() {
    let srv = Server::builder().socketio().start();
    let mut failures = Vec::new();
    for t in 0..TRIES {
        let s = send_then_fin(
            srv.socketio,
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let (got, how) = answers(s, REPLY);
        let text = String::from_utf8_lossy(&got);
        if !(text.starts_with("HTTP/1.1 200 ") && text.contains("\r\n\r\n0{\"sid\":\""))
            || how != Eof::Fin
        {
            failures.push(format!("try {t}: {} then {how:?}", show(&got)));
        }
    }
    assert_all_answered("Socket.IO polling handshake + FIN", TRIES, &failures);
}

/// Opens a WebSocket with raw bytes and reads the `101` answer.
fn raw_ws(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect ws");
    s.set_nodelay(true).ok();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .expect("write handshake");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(REPLY)).ok();
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read handshake answer"), 1, "closed");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", show(&head));
    s
}

#[test]
fn websocket_fin_still_gets_the_close_frame_already_queued() {
    let srv = Server::start();
    // A client's close (1000, masked with a zero key) then FIN: the echo goes out, then the
    // server closes. An unmasked frame then FIN: the 1002 close goes out, then the close.
    let close_1000: &[u8] = &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8];
    let unmasked: &[u8] = &[0x81, 0x01, b'x'];
    let mut failures = Vec::new();
    for t in 0..TRIES {
        for (frame, code) in [(close_1000, 1000u16), (unmasked, 1002)] {
            let mut s = raw_ws(srv.ws);
            s.write_all(frame).expect("write frame");
            s.shutdown(Shutdown::Write).expect("shutdown(SHUT_WR)");
            let (got, how) = answers(s, REPLY);
            let ok = got.len() >= 4
                && got[0] == 0x88
                && u16::from_be_bytes([got[2], got[3]]) == code
                && how == Eof::Fin;
            if !ok {
                failures.push(format!("try {t} ({code}): {} then {how:?}", show(&got)));
            }
        }
    }
    assert_all_answered("WebSocket close frame + FIN", 2 * TRIES, &failures);
}
