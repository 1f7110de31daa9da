//! RFC 9112 / RFC 9110 conformance of the HTTP port, end to end: raw request bytes written to
//! the real server, the raw response read back. Each test names the section it holds the
//! server to.
//!
//! * RFC 9110 section 8.6: `Content-Length` is `1*DIGIT`; anything else (a sign, a list,
//!   a space inside) is refused with 400, and so is a repeated header, even with equal values.
//! * RFC 9112 section 3.2.2: a target in absolute form (`http://host/path?query`) routes like
//!   its origin form (`/path?query`).
//! * RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, or any request with two, is
//!   refused with 400.
//! * RFC 9112 section 6.1: `Transfer-Encoding` on an HTTP/1.0 request means faulty framing:
//!   the connection is closed after the response.
//! * RFC 9112 section 9.3 (and RFC 9110 section 7.6.1): an HTTP/1.0 request that asked for
//!   `Connection: keep-alive` and is kept open is told so with `Connection: keep-alive`.
//! * RFC 9110 section 11.1: the `Bearer` scheme's name is case-insensitive.
//! * RFC 2046 section 5.1.1 (via RFC 7578): a `multipart/form-data` boundary is matched as
//!   sent, case included, as browsers' mixed-case boundaries need.
//! * RFC 9112 section 7.1 (chunked transfer coding) with RFC 9110 section 15.5.14 and RFC 6585
//!   section 5: a chunked body over `max_body`, whatever its chunks' sizes, is refused with 413
//!   as soon as it is known to be over, and a flood of trailer fields with 431, both while the
//!   client is still sending; an ordinary chunked body just under the limit is served.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

/// Asserts that `req`, alone on a fresh connection, is refused with 400 and the connection
/// then closed.
fn assert_400(srv: &Server, req: &[u8]) {
    let mut c = HttpConn::connect(srv.http);
    c.send(req).expect("write request");
    let r = c.read_response(REPLY);
    assert_eq!(r.status, 400, "request {} got {}", show(req), r.head);
    let (rest, how) = c.read_until_closed(REPLY);
    assert!(rest.is_empty(), "bytes after the 400: {}", show(&rest));
    assert_ne!(how, Eof::Open, "connection left open after {}", show(req));
}

// ---------------------------------------------------------------------------------------------
// RFC 9110 section 8.6: Content-Length = 1*DIGIT
// ---------------------------------------------------------------------------------------------

#[test]
fn content_length_is_digits_only() {
    let srv = Server::start();
    let body = "type=publish&content=x";
    for value in [
        format!("+{}", body.len()),
        format!("{0},{0}", body.len()),
        format!("{}, {}", body.len(), body.len() + 1),
        format!("{} {}", body.len(), body.len()),
        format!("0x{:x}", body.len()),
        "-1".to_owned(),
        "99999999999999999999999999".to_owned(),
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {value}\r\n\r\n{body}"
        );
        assert_400(&srv, req.as_bytes());
    }
    // A repeated header is refused even when both values agree (RFC 9112 section 6.3 allows
    // either answer; Herald takes the one that leaves no room for a disagreement downstream).
    let twice = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {0}\r\nContent-Length: {0}\r\n\r\n{body}",
        body.len()
    );
    assert_400(&srv, twice.as_bytes());
    // Whitespace around the value is the field's optional whitespace, not part of it.
    let spaced = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \t{} \r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = srv.http(spaced.as_bytes());
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
}

// ---------------------------------------------------------------------------------------------
// RFC 9112 section 3.2.2: absolute-form targets
// ---------------------------------------------------------------------------------------------

#[test]
fn absolute_form_target_routes_like_origin_form() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("abs");
    let port = srv.http;
    let r = srv.http(
        format!(
            "GET http://127.0.0.1:{port}/?type=publish&to=abs&content=from%20afar HTTP/1.1\r\n\
             Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
    assert_eq!(c.recv_text(REPLY), "from afar");
    // The scheme is case-insensitive, and the JSON API routes the same way.
    let r = srv.http(
        format!(
            "GET HTTP://127.0.0.1:{port}/api/online/abs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "{\"online\":true,\"connections\":1}\n");
    // An authority with nothing after it means the path `/`.
    let r = srv.http(
        format!(
            "GET http://127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!((r.status, r.text()), (200, "fail".to_owned()), "{}", r.head);
}

// ---------------------------------------------------------------------------------------------
// RFC 9112 section 3.2: Host
// ---------------------------------------------------------------------------------------------

#[test]
fn host_is_required_once_in_http_1_1() {
    let srv = Server::start();
    assert_400(
        &srv,
        b"GET /?type=publish&content=x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_400(
        &srv,
        b"GET /?type=publish&content=x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert_400(
        &srv,
        b"GET /?type=publish&content=x HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
    );
    // HTTP/1.0 predates Host: a request without it is served.
    let r = srv.http(b"GET /?type=publish&content=x HTTP/1.0\r\n\r\n");
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
}

// ---------------------------------------------------------------------------------------------
// RFC 9112 section 6.1 and 9.3: HTTP/1.0 framing and persistence
// ---------------------------------------------------------------------------------------------

#[test]
fn transfer_encoding_on_http_1_0_closes_after_the_response() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("te10");
    let body = "type=publish&to=te10&content=chunked";
    let req = format!(
        "POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let mut conn = HttpConn::connect(srv.http);
    conn.send(req.as_bytes()).expect("write");
    let r = conn.read_response(REPLY);
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    assert_eq!(c.recv_text(REPLY), "chunked");
    let (rest, how) = conn.read_until_closed(REPLY);
    assert!(rest.is_empty(), "{}", show(&rest));
    assert_ne!(
        how,
        Eof::Open,
        "an HTTP/1.0 chunked request left the connection open"
    );
}

#[test]
fn http_1_0_keep_alive_is_answered_with_keep_alive() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("ka10");
    let mut conn = HttpConn::connect(srv.http);
    for word in ["one", "two"] {
        conn.send(
            format!(
                "GET /?type=publish&to=ka10&content={word} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
        let r = conn.read_response(REPLY);
        assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
        assert_eq!(
            r.header("connection").as_deref(),
            Some("keep-alive"),
            "an HTTP/1.0 client is only kept alive if told so: {}",
            r.head
        );
        assert_eq!(c.recv_text(REPLY), word);
    }
    // Without the token, HTTP/1.0 closes, and says so.
    conn.send(b"GET /?type=publish&to=ka10&content=three HTTP/1.0\r\n\r\n")
        .expect("write");
    let r = conn.read_response(REPLY);
    assert_eq!(
        r.header("connection").as_deref(),
        Some("close"),
        "{}",
        r.head
    );
    let (_, how) = conn.read_until_closed(REPLY);
    assert_ne!(how, Eof::Open);
}

// ---------------------------------------------------------------------------------------------
// RFC 2046 section 5.1.1: multipart boundaries are case-sensitive
// ---------------------------------------------------------------------------------------------

#[test]
fn multipart_boundary_keeps_its_case() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("wk");
    // As a browser's FormData writes it.
    let boundary = "----WebKitFormBoundaryAbC7dEf9GhIjKlMn";
    let mut body = String::new();
    for (k, v) in [("type", "publish"), ("to", "wk"), ("content", "Mixed Case")] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    for ctype in [
        format!("multipart/form-data; boundary={boundary}"),
        format!("Multipart/Form-Data; Boundary=\"{boundary}\""),
    ] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let r = srv.http(req.as_bytes());
        assert_eq!(
            (r.status, r.text()),
            (200, "ok".to_owned()),
            "{ctype}: {}",
            r.head
        );
        assert_eq!(c.recv_text(REPLY), "Mixed Case");
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 9110 section 11.1: auth-scheme names are case-insensitive
// ---------------------------------------------------------------------------------------------

/// The push secret of the server below.
const SECRET: &str = "conformance-push-secret";

#[test]
fn bearer_scheme_is_case_insensitive() {
    let srv = Server::builder()
        .set(&format!("push_secret={SECRET}"))
        .start();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = srv.http(
            format!(
                "GET /?type=publish&content=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                 Authorization: {scheme} {SECRET}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(
            (r.status, r.text()),
            (200, "ok".to_owned()),
            "{scheme}: {}",
            r.head
        );
    }
    let r = srv.http(
        format!(
            "GET /?type=publish&content=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Basic {SECRET}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.head);
}

// ---------------------------------------------------------------------------------------------
// RFC 9112 section 7.1: chunked bodies over max_body, trailer floods
// ---------------------------------------------------------------------------------------------

/// `body` in the chunked coding, `chunk` bytes per chunk, with the last chunk and no trailer.
fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for c in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    out
}

/// Writes `head` then `rest` (on a thread: the server may stop reading once it has answered),
/// and reads the response: its status and how long after the first byte it came.
fn send_and_time(srv: &Server, head: &[u8], rest: Vec<u8>) -> (u16, Duration) {
    let mut c = HttpConn::connect(srv.http);
    let mut w = c.stream.try_clone().expect("clone");
    let t0 = Instant::now();
    c.send(head).expect("write head");
    let writer = std::thread::spawn(move || {
        // An error is the server closing after its answer, which is read below.
        let _ = w.write_all(&rest);
    });
    let r = c.read_response(Duration::from_secs(3));
    let took = t0.elapsed();
    let (_, how) = c.read_until_closed(REPLY);
    assert_ne!(how, Eof::Open, "left open after {}", r.head);
    drop(c);
    writer.join().expect("writer");
    (r.status, took)
}

const CHUNKED_HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n";

#[test]
fn chunked_bodies_over_max_body_are_refused_at_once_whatever_their_chunks() {
    let srv = Server::start();
    // 1.2 MB and 1.9 MB against max_body's default of 1 MiB, in chunks small enough that their
    // framing outweighs the limit's margin, and in ordinary ones.
    for (size, chunk) in [
        (1_200_000, 10),
        (1_900_000, 10),
        (1_200_000, 100),
        (1_900_000, 4096),
    ] {
        let mut body = b"type=publish&to=nobody&content=".to_vec();
        body.resize(size, b'a');
        let mut rest = chunked(&body, chunk);
        rest.extend_from_slice(b"\r\n");
        let (status, took) = send_and_time(&srv, CHUNKED_HEAD, rest);
        assert_eq!(status, 413, "{size} B in {chunk} B chunks");
        assert!(
            took < Duration::from_secs(2),
            "{size} B in {chunk} B chunks: 413 after {took:?}"
        );
    }
    // A trailer flood after the last chunk: 1.5 MB of fields.
    let mut rest = chunked(b"type=publish&to=nobody&content=x", 64);
    for i in 0..15_000 {
        rest.extend_from_slice(format!("X-Trailer-{i}: {}\r\n", "t".repeat(80)).as_bytes());
    }
    rest.extend_from_slice(b"\r\n");
    let (status, took) = send_and_time(&srv, CHUNKED_HEAD, rest);
    assert!(
        status == 431 || status == 413,
        "trailer flood answered {status}"
    );
    assert!(
        took < Duration::from_secs(2),
        "trailer flood refused after {took:?}"
    );
    // Under the limit: served, in ordinary chunks and in small ones.
    for (size, chunk) in [(1_000_000, 4096), (200_000, 16)] {
        let mut body = b"type=publish&to=nobody&content=".to_vec();
        body.resize(size, b'a');
        let mut req = CHUNKED_HEAD.to_vec();
        req.extend_from_slice(&chunked(&body, chunk));
        req.extend_from_slice(b"X-Checksum: 1\r\n\r\n");
        let r = srv.http(&req);
        assert_eq!(
            (r.status, r.text()),
            (200, "offline".to_owned()),
            "{size} B in {chunk} B chunks"
        );
    }
}
