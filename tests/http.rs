//! HTTP publish API, end to end (issue 2, point 3; seed 004): GET and POST forms, PHP
//! `htmlspecialchars` escaping, `ok`/`offline`/`fail` bodies, broadcast on an empty `to`,
//! keep-alive, chunked request bodies, and the 400/404/405/413 statuses.
//!
//! Clients log in with `login_reply=true` and wait for the reply before any publish, so every
//! answer below is deterministic.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn get_publish_to_online_uid() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("123");
    let r = srv.http(&get("/?type=publish&to=123&content=hello%20world"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "ok");
    assert_eq!(c.recv_text(REPLY), "hello world");
}

#[test]
fn post_form_publish_as_in_seed() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("123");
    // "数据" percent-encoded, '+' for a space, as PHP's http_build_query writes it.
    let r = srv.http(&post_form(
        "type=publish&content=%E6%95%B0%E6%8D%AE+now&to=123",
    ));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "ok");
    assert_eq!(c.recv_text(REPLY), "数据 now");
}

#[test]
fn content_is_escaped_like_htmlspecialchars() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("esc");
    // <b>"Tom" & 'Jerry'</b> &amp;
    let content = "%3Cb%3E%22Tom%22%20%26%20%27Jerry%27%3C%2Fb%3E%20%26amp%3B";
    let r = srv.http(&get(&format!("/?type=publish&to=esc&content={content}")));
    assert_eq!(r.text(), "ok");
    assert_eq!(
        c.recv_text(REPLY),
        "&lt;b&gt;&quot;Tom&quot; &amp; &#039;Jerry&#039;&lt;/b&gt; &amp;amp;"
    );
    // POST goes through the same escaping.
    let r = srv.http(&post_form(&format!(
        "type=publish&to=esc&content={content}"
    )));
    assert_eq!(r.text(), "ok");
    assert_eq!(
        c.recv_text(REPLY),
        "&lt;b&gt;&quot;Tom&quot; &amp; &#039;Jerry&#039;&lt;/b&gt; &amp;amp;"
    );
}

#[test]
fn offline_uid_answers_offline() {
    let srv = Server::builder().login_reply().start();
    let _c = srv.login_acked("present");
    let r = srv.http(&get("/?type=publish&to=absent&content=x"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.text(), "offline");
    let r = srv.http(&post_form("type=publish&to=absent&content=x"));
    assert_eq!(r.text(), "offline");
}

#[test]
fn other_type_answers_fail() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("123");
    for target in [
        "/?type=subscribe&to=123&content=x",
        "/?to=123&content=x",
        "/",
        "/?type=PUBLISH&to=123&content=x",
    ] {
        let r = srv.http(&get(target));
        assert_eq!(r.status, 200, "{target}: {}", r.head);
        assert_eq!(r.text(), "fail", "{target}");
    }
    let r = srv.http(&post_form("type=nope&to=123&content=x"));
    assert_eq!(r.text(), "fail");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn empty_or_missing_to_broadcasts() {
    let srv = Server::builder().login_reply().start();
    let mut a = srv.login_acked("a");
    let mut b = srv.login_acked("b");
    let r = srv.http(&get("/?type=publish&to=&content=to%20all"));
    assert_eq!(r.text(), "ok");
    assert_eq!(a.recv_text(REPLY), "to all");
    assert_eq!(b.recv_text(REPLY), "to all");
    let r = srv.http(&post_form("type=publish&content=again%21"));
    assert_eq!(r.text(), "ok");
    assert_eq!(a.recv_text(REPLY), "again!");
    assert_eq!(b.recv_text(REPLY), "again!");
}

#[test]
fn broadcast_with_nobody_online_is_ok() {
    let srv = Server::start();
    assert_eq!(srv.http(&get("/?type=publish&content=x")).text(), "ok");
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("ka");
    let mut conn = HttpConn::connect(srv.http);
    conn.send(b"GET /?type=publish&to=ka&content=one HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let r1 = conn.read_response(REPLY);
    assert_eq!(
        (r1.status, r1.text()),
        (200, "ok".to_owned()),
        "{}",
        r1.head
    );
    assert_eq!(c.recv_text(REPLY), "one");
    let body = "type=publish&to=ka&content=two";
    conn.send(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("write second request on the same connection");
    let r2 = conn.read_response(REPLY);
    assert_eq!(
        (r2.status, r2.text()),
        (200, "ok".to_owned()),
        "{}",
        r2.head
    );
    assert_eq!(c.recv_text(REPLY), "two");
    // Two pipelined requests in one write: two responses, in order.
    conn.send(
        b"GET /?type=publish&to=ka&content=three HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /?type=publish&to=zz&content=four HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .expect("write pipelined");
    assert_eq!(conn.read_response(REPLY).text(), "ok");
    assert_eq!(conn.read_response(REPLY).text(), "offline");
    assert_eq!(c.recv_text(REPLY), "three");
}

#[test]
fn http_1_0_and_connection_close_close_the_connection() {
    let srv = Server::builder().login_reply().start();
    let _c = srv.login_acked("u");
    let mut conn = HttpConn::connect(srv.http);
    conn.send(
        b"GET /?type=publish&to=u&content=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    assert_eq!(conn.read_response(REPLY).text(), "ok");
    let (extra, how) = conn.read_until_closed(REPLY);
    assert!(extra.is_empty(), "{}", show(&extra));
    assert_ne!(how, Eof::Open, "Connection: close not honoured");
}

#[test]
fn chunked_post_body() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("chunky");
    let body = "type=publish&to=chunky&content=split%20in%20chunks";
    let (p1, p2) = body.split_at(17);
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{p1}\r\n{:x};ext=1\r\n{p2}\r\n0\r\n\r\n",
        p1.len(),
        p2.len()
    );
    let mut conn = HttpConn::connect(srv.http);
    // Written in two parts, the split inside a chunk.
    let (a, b) = req.as_bytes().split_at(req.len() - 20);
    conn.send(a).expect("write");
    std::thread::sleep(Duration::from_millis(50)); // let the first part arrive alone
    conn.send(b).expect("write");
    let r = conn.read_response(REPLY);
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
    assert_eq!(c.recv_text(REPLY), "split in chunks");
}

#[test]
fn malformed_request_is_400() {
    let srv = Server::start();
    for req in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nThis is not a header\r\n\r\n"[..],
        &b"GET\x01/ HTTP/1.1\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n"[..],
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n0\r\n\r\n"[..],
    ] {
        let r = srv.http(req);
        assert_eq!(r.status, 400, "request {} got {}", show(req), r.head);
    }
}

#[test]
fn unknown_path_is_404() {
    let srv = Server::start();
    let r = srv.http(&get("/nope?type=publish&to=&content=x"));
    assert_eq!(r.status, 404, "{}", r.head);
    let r = srv.http(&get("/api/v0/whatever"));
    assert_eq!(r.status, 404, "{}", r.head);
}

#[test]
fn bad_method_is_405() {
    let srv = Server::start();
    for m in ["DELETE", "PUT", "PATCH"] {
        let r = srv.http(
            format!("{m} /?type=publish&content=x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 405, "{m}: {}", r.head);
    }
}

#[test]
fn body_over_max_body_is_413() {
    let srv = Server::builder().set("max_body=1024").start();
    let body = format!("type=publish&content={}", "x".repeat(4000));
    let mut conn = HttpConn::connect(srv.http);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes()).expect("write head");
    // The server may answer before the body, and close: a failed body write is fine.
    let _ = conn.send(body.as_bytes());
    let r = conn.read_response(REPLY);
    assert_eq!(r.status, 413, "{}", r.head);
    // A chunked body growing past the limit is refused too.
    let mut conn = HttpConn::connect(srv.http);
    let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(format!("400\r\n{}\r\n", "y".repeat(0x400)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = conn.send(&req);
    let r = conn.read_response(REPLY);
    assert_eq!(r.status, 413, "{}", r.head);
    // And the server still answers normal requests.
    assert_eq!(srv.http(&get("/?type=publish&content=x")).text(), "ok");
}

#[test]
fn post_multipart_form_as_php_curl_sends_it() {
    // Seed 004's PHP passes an *array* to CURLOPT_POSTFIELDS, which makes curl send
    // multipart/form-data. The seed's snippet must work unchanged, so this body must publish.
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("123");
    let boundary = "------------------------a1b2c3d4e5f6";
    let mut body = String::new();
    for (k, v) in [("type", "publish"), ("content", "数据 <x>"), ("to", "123")] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let req = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:2121\r\nAccept: */*\r\nContent-Length: {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = srv.http(req.as_bytes());
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()), "{}", r.head);
    assert_eq!(c.recv_text(REPLY), "数据 &lt;x&gt;");
}

/// The probes: `/healthz` answers while the process is up, `/readyz` once the worker reaches
/// its siblings; neither is behind `push_secret`, and neither asks the other workers.
#[test]
fn health_and_readiness_probes() {
    let srv = Server::builder()
        .workers(2)
        .set("push_secret=\"probe-secret\"")
        .start();
    for path in ["/healthz", "/readyz"] {
        let ok = wait_until(Duration::from_secs(5), || {
            let r = srv.http(&get(path));
            r.status == 200 && r.text() == "ok\n"
        });
        assert!(ok, "{path} never answered 200 ok");
    }
    // Anything else on this port still needs the secret.
    assert_eq!(srv.http(&get("/metrics")).status, 401);
    // A probe is a GET.
    let r = srv.http(
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.head);
}

/// `herald status` of a server that is not running exits 3, as LSB init scripts expect.
#[test]
fn status_of_a_stopped_server_exits_3() {
    let dir = TempDir::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["status", "--pid-file"])
        .arg(dir.path.join("nobody.pid"))
        .output()
        .expect("run herald status");
    assert_eq!(out.status.code(), Some(3), "{}", show(&out.stderr));
    assert!(
        show(&out.stderr).contains("not running"),
        "{}",
        show(&out.stderr)
    );
}
