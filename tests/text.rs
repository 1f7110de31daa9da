//! Text port, end to end (issue 2, points 2 and 4): the seed's JSON line pushes the exact line,
//! `ok`/`fail` replies, `\r\n`, lines that are not pushes, pipelining on one long-lived
//! connection with replies in order, and the `cmd:all` / `cmd:push` forms.
//!
//! Clients log in with `login_reply=true` and wait for the reply, so every push below is made
//! after the uid is registered and its reply is deterministic.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn seed_line_replies_ok_and_pushes_exact_line() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("uid1");
    assert_eq!(
        srv.text_push(b"{\"uid\":\"uid1\",\"percent\":\"88%\"}\n"),
        b"ok\n"
    );
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"uid1\",\"percent\":\"88%\"}");
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn line_is_pushed_verbatim_not_reencoded() {
    // Spacing, key order, escapes and non-ASCII text survive as sent.
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("u-verbatim");
    let line =
        "{ \"percent\" : \"88%\",  \"uid\":\"u-verbatim\", \"t\":\"caf\\u00e9 数据 \\\"q\\\"\" }";
    assert_eq!(srv.text_push(format!("{line}\n").as_bytes()), b"ok\n");
    assert_eq!(c.recv_text(REPLY), line);
}

#[test]
fn offline_uid_replies_fail() {
    let srv = Server::builder().login_reply().start();
    let _c = srv.login_acked("someone");
    assert_eq!(
        srv.text_push(b"{\"uid\":\"uid1\",\"percent\":\"88%\"}\n"),
        b"fail\n"
    );
}

#[test]
fn crlf_line_ending_is_accepted_and_stripped() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("crlf");
    assert_eq!(srv.text_push(b"{\"uid\":\"crlf\",\"x\":1}\r\n"), b"ok\n");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"crlf\",\"x\":1}");
}

#[test]
fn lines_that_are_not_pushes_fail_and_connection_stays_usable() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("u1");
    let mut conn = TextConn::connect(srv.text);
    let bad: &[&[u8]] = &[
        b"not json\n",
        b"{\"uid\":\"u1\"\n",           // truncated object
        b"[\"u1\"]\n",                  // array
        b"\"u1\"\n",                    // string
        b"42\n",                        // number
        b"{\"percent\":\"88%\"}\n",     // no uid
        b"{\"uid\":5}\n",               // uid not a string
        b"{\"uid\":null}\n",            // uid null
        b"{\"uid\":[\"u1\"]}\n",        // uid array
        b"{\"uid\":\"u1\"} trailing\n", // garbage after the object
    ];
    for (i, line) in bad.iter().enumerate() {
        conn.send(line);
        assert_eq!(
            conn.read_lines(1, REPLY),
            b"fail\n",
            "bad line #{i} {}",
            show(line)
        );
    }
    // Same connection, now a good line.
    conn.send(b"{\"uid\":\"u1\",\"after\":\"bad\"}\n");
    assert_eq!(conn.read_lines(1, REPLY), b"ok\n");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"u1\",\"after\":\"bad\"}");
    // None of the bad lines reached the client.
    c.expect_silence(Duration::from_millis(200));
}

#[test]
fn hundred_pipelined_lines_get_hundred_replies_in_order() {
    let srv = Server::builder().login_reply().start();
    let mut a = srv.login_acked("pa");
    let mut b = srv.login_acked("pb");
    let mut batch = Vec::new();
    let mut want_replies = Vec::new();
    let mut want_a = Vec::new();
    let mut want_b = Vec::new();
    for i in 0..100 {
        let line = match i % 4 {
            0 => format!("{{\"uid\":\"pa\",\"i\":{i}}}"),
            1 => format!("{{\"uid\":\"offline-{i}\",\"i\":{i}}}"),
            2 => format!("{{\"uid\":\"pb\",\"i\":{i}}}"),
            _ => format!("nonsense {i}"),
        };
        batch.extend_from_slice(line.as_bytes());
        batch.push(b'\n');
        match i % 4 {
            0 => {
                want_replies.extend_from_slice(b"ok\n");
                want_a.push(line);
            }
            2 => {
                want_replies.extend_from_slice(b"ok\n");
                want_b.push(line);
            }
            _ => want_replies.extend_from_slice(b"fail\n"),
        }
    }
    let mut conn = TextConn::connect(srv.text);
    conn.send(&batch); // one write
    let got = conn.read_lines(100, Duration::from_secs(8));
    assert_eq!(show(&got), show(&want_replies));
    for line in want_a {
        assert_eq!(a.recv_text(REPLY), line);
    }
    for line in want_b {
        assert_eq!(b.recv_text(REPLY), line);
    }
    // Nothing more arrives on the connection (exactly 100 replies).
    let (extra, _) = conn.read_until_closed(Duration::from_millis(200));
    assert!(extra.is_empty(), "extra reply bytes {}", show(&extra));
}

#[test]
fn long_lived_connection_and_byte_at_a_time_writes() {
    let srv = Server::builder().login_reply().start();
    let mut c = srv.login_acked("slow");
    let mut conn = TextConn::connect(srv.text);
    // A line dribbled one byte per write is still one line.
    for b in b"{\"uid\":\"slow\",\"n\":1}\n" {
        conn.send(&[*b]);
    }
    assert_eq!(conn.read_lines(1, REPLY), b"ok\n");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"slow\",\"n\":1}");
    // Two lines and half a third in one write, the rest later.
    conn.send(b"{\"uid\":\"slow\",\"n\":2}\n{\"uid\":\"gone\"}\n{\"uid\":\"sl");
    assert_eq!(conn.read_lines(2, REPLY), b"ok\nfail\n");
    conn.send(b"ow\",\"n\":3}\n");
    assert_eq!(conn.read_lines(1, REPLY), b"ok\n");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"slow\",\"n\":2}");
    assert_eq!(c.recv_text(REPLY), "{\"uid\":\"slow\",\"n\":3}");
}

#[test]
fn cmd_all_with_string_data_sends_it_as_is() {
    let srv = Server::builder().login_reply().start();
    let mut a = srv.login_acked("a");
    let mut b = srv.login_acked("b");
    let mut anon = srv.ws_connect(); // never logged in: not part of "all"
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"all\",\"data\":\"hello \\\"all\\\" \xe6\x95\xb0\"}\n"),
        b"ok\n"
    );
    assert_eq!(a.recv_text(REPLY), "hello \"all\" 数");
    assert_eq!(b.recv_text(REPLY), "hello \"all\" 数");
    anon.roundtrip();
    anon.expect_silence(Duration::from_millis(100));
}

#[test]
fn cmd_all_with_json_data_sends_compact_json() {
    let srv = Server::builder().login_reply().start();
    let mut a = srv.login_acked("a");
    // Keys already in sorted order, so the expectation does not depend on map ordering.
    assert_eq!(
        srv.text_push(b"{\"cmd\": \"all\", \"data\": {\"a\": 1, \"b\": [true, null, 2.5], \"c\": {\"d\": \"e\"}}}\n"),
        b"ok\n"
    );
    assert_eq!(
        a.recv_text(REPLY),
        "{\"a\":1,\"b\":[true,null,2.5],\"c\":{\"d\":\"e\"}}"
    );
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"all\",\"data\":[1, 2]}\n"),
        b"ok\n"
    );
    assert_eq!(a.recv_text(REPLY), "[1,2]");
    assert_eq!(srv.text_push(b"{\"cmd\":\"all\",\"data\":42}\n"), b"ok\n");
    assert_eq!(a.recv_text(REPLY), "42");
}

#[test]
fn cmd_all_with_nobody_online_replies_ok() {
    let srv = Server::start();
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"all\",\"data\":\"x\"}\n"),
        b"ok\n"
    );
}

#[test]
fn cmd_push_to_one_uid_or_a_list() {
    let srv = Server::builder().login_reply().start();
    let mut u1 = srv.login_acked("u1");
    let mut u2 = srv.login_acked("u2");
    let mut u3 = srv.login_acked("u3");

    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":\"u1\",\"data\":\"just u1\"}\n"),
        b"ok\n"
    );
    assert_eq!(u1.recv_text(REPLY), "just u1");

    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":[\"u1\",\"u2\"],\"data\":{\"k\":\"v\"}}\n"),
        b"ok\n"
    );
    assert_eq!(u1.recv_text(REPLY), "{\"k\":\"v\"}");
    assert_eq!(u2.recv_text(REPLY), "{\"k\":\"v\"}");

    // At least one delivered is enough for ok.
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":[\"nobody\",\"u2\"],\"data\":\"some\"}\n"),
        b"ok\n"
    );
    assert_eq!(u2.recv_text(REPLY), "some");

    // None delivered: fail.
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":\"nobody\",\"data\":\"x\"}\n"),
        b"fail\n"
    );
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":[\"nobody\",\"noone\"],\"data\":\"x\"}\n"),
        b"fail\n"
    );
    assert_eq!(
        srv.text_push(b"{\"cmd\":\"push\",\"to\":[],\"data\":\"x\"}\n"),
        b"fail\n"
    );

    // u3 was never addressed.
    u3.roundtrip();
    u3.expect_silence(Duration::from_millis(200));
    u1.expect_silence(Duration::from_millis(50));
}
