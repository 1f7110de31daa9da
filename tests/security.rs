//! Identity, limits and hostile input, end to end (issue 4, "Tests"): each protection the worker
//! implements has a test here that fails if the protection is removed.
//!
//! * Start-up: a public WebSocket port without `auth`, and `hmac`/`jwt` without a long enough
//!   `auth_secret`, refuse to start.
//! * Identity: HMAC tokens (valid, forged, tampered, expired, malformed; first frame or `?token=`),
//!   JWTs (valid, expired, wrong key, `alg: none`, another algorithm, no `exp`), and a token made
//!   by PHP's `hash_hmac` (`scripts/php/token.php`). Refusals are close 4001 or HTTP 401, are
//!   counted (`auth_failed`) and logged with the remote address, never with the token.
//! * Deadlines: login and handshake deadline (`auth_timeout`, trickling slowloris included),
//!   server pings and the idle close (`ping_interval`, `idle_timeout`).
//! * Limits: `max_frame` (1009), `max_line`, `max_body` (413), `max_header` (431),
//!   `max_connections` (503 / error line), `max_connections_per_ip` (429, another address still
//!   admitted), `allowed_origins` (403).
//! * Slow consumers: clients that never read do not raise worker RSS past what the cap allows
//!   while 1,000 large broadcasts go on, `status` counts `send_fail`, and with a short
//!   `slow_timeout` they are closed while a reading client is not.
//! * `push_secret` on the text and HTTP ports; the secret never reaches a client or the log.
//! * Hostile input: unmasked frames, reserved opcodes and bits, bad UTF-8, a 2^62 length field,
//!   request-smuggling shapes, NUL bytes, invalid JSON and invalid UTF-8 on the text port, a
//!   client flooding pings without reading, 10,000 connections opened and dropped.
//!
//! Raw WebSocket clients (`Raw`, below) are used where tungstenite would not misbehave on
//! purpose or would answer pings by itself. Every wait is on an event (a frame, a close, a status
//! counter) with a deadline. Counters come from `herald status`, parsed from its table.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::Message;

/// Shared secret for `hmac` and `jwt` (at least 16 characters; not a TOML value, so `--set`
/// takes it as a string).
const SECRET: &str = "test-auth-secret-0123456789";
/// `push_secret` for the backend ports.
const PUSH_SECRET: &str = "push-secret-zyx-987654321";
/// The RFC 6455 sample key.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A JWT with `claims`, signed with `alg` under `secret`.
fn jwt(secret: &str, alg: jsonwebtoken::Algorithm, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode jwt")
}

/// Unpadded base64url, for a hand-made `alg: none` token.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters (for `?token=`).
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reads a tungstenite client until a close frame; returns its code and reason, or `None` if
/// the connection ended without one (or stayed open) within `limit`.
fn close_of(ws: &mut Ws, limit: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv(left) {
            Ok(Message::Close(Some(f))) => return Some((u16::from(f.code), f.reason.to_string())),
            Ok(Message::Close(None)) => return Some((1005, String::new())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Sum of the workers' VmRSS in KiB.
fn workers_rss_kib(srv: &Server) -> u64 {
    rss_kib(&srv.worker_pids())
}

/// Sum of the VmRSS of `pids` in KiB (processes gone count as 0).
fn rss_kib(pids: &BTreeSet<u32>) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Runs `herald status` and sums each numeric column of the worker table over the workers.
fn status(srv: &mut Server) -> (BTreeMap<String, u64>, String) {
    let out = srv.cli(&["status"], Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "herald status: {}\n{}\n{}",
        out.status,
        text,
        show(&out.stderr)
    );
    let mut sums = BTreeMap::new();
    let mut header: Option<Vec<&str>> = None;
    for line in text.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.starts_with(&["worker", "pid", "state"]) {
            header = Some(cells);
            continue;
        }
        let Some(h) = &header else { continue };
        if line.starts_with('-') {
            break;
        }
        if cells.len() != h.len() {
            continue;
        }
        for (k, v) in h.iter().zip(&cells) {
            if let Ok(n) = v.parse::<u64>() {
                *sums.entry(k.to_string()).or_insert(0) += n;
            }
        }
    }
    assert!(header.is_some(), "no worker table in status:\n{text}");
    (sums, text)
}

/// Polls `herald status` until counter `key` reaches `at_least`; returns the counters.
fn wait_counter(
    srv: &mut Server,
    key: &str,
    at_least: u64,
    limit: Duration,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + limit;
    loop {
        let (c, text) = status(srv);
        if c.get(key).copied().unwrap_or(0) >= at_least {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "status counter {key} did not reach {at_least} within {limit:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A masked client frame (7-, 16- or 64-bit length as needed).
fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let n = payload.len();
    if n < 126 {
        v.push(0x80 | n as u8);
    } else if n <= 0xffff {
        v.push(0x80 | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

/// An opening handshake request.
fn upgrade_request(target: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

/// A raw TCP WebSocket client: sends exactly the bytes a test wants, reads server frames
/// without answering anything (no automatic pong, so reading never counts as activity).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// A server frame: opcode and payload.
type Frame = (u8, Vec<u8>);

impl Raw {
    fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).ok();
        s.set_write_timeout(Some(REPLY)).ok();
        Raw { s, buf: Vec::new() }
    }

    /// Connects from local address `ip`, optionally with a small receive buffer.
    fn connect_from(ip: &str, port: u16, rcvbuf: Option<usize>) -> std::io::Result<Raw> {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n)?;
        }
        let local: SocketAddr = format!("{ip}:0").parse().expect("addr");
        sock.bind(&local.into())?;
        let remote: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        sock.connect_timeout(&remote.into(), REPLY)?;
        let s: TcpStream = sock.into();
        s.set_nodelay(true).ok();
        s.set_write_timeout(Some(REPLY)).ok();
        Ok(Raw { s, buf: Vec::new() })
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads more bytes; `Err` on EOF/reset, `Ok(false)` at the deadline.
    fn fill(&mut self, deadline: Instant) -> Result<bool, Eof> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.s.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) => Err(Eof::Fin),
            Ok(k) => {
                self.buf.extend_from_slice(&chunk[..k]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(true)
            }
            Err(_) => Err(Eof::Reset),
        }
    }

    /// Reads an HTTP response head; returns the status code and the head. Panics on timeout or
    /// a close before a full head.
    fn head(&mut self, limit: Duration) -> (u16, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 4);
                let code = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("bad status line: {head:?}"));
                return (code, head);
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => panic!("no response head within {limit:?}: {}", show(&self.buf)),
                Err(e) => panic!("closed ({e:?}) before a response head: {}", show(&self.buf)),
            }
        }
    }

    /// Handshake on `port` with `target` and extra headers; asserts 101.
    fn upgrade(port: u16, target: &str, extra_headers: &str) -> Raw {
        let mut r = Raw::connect(port);
        r.send(&upgrade_request(target, extra_headers))
            .expect("send handshake");
        let (code, head) = r.head(REPLY);
        assert_eq!(code, 101, "handshake refused: {head}");
        r
    }

    /// Handshake and seed-mode login (`uid` as the first frame); waits for the login reply
    /// (the server needs `login_reply`).
    fn login(port: u16, uid: &str) -> Raw {
        let mut r = Raw::upgrade(port, "/", "");
        r.send(&masked(true, 0x1, uid.as_bytes())).expect("login");
        r.expect_text(&format!("login success, your uid is {uid}"));
        r
    }

    /// The next server frame within `limit`: `Ok(None)` at the deadline.
    fn frame(&mut self, limit: Duration) -> Result<Option<Frame>, Eof> {
        let deadline = Instant::now() + limit;
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frame is masked");
                let (len, head) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if head > 0 && self.buf.len() >= head + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Ok(Some((opcode, payload)));
                }
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Waits for a text frame with exactly `want`, skipping pings.
    fn expect_text(&mut self, want: &str) {
        loop {
            match self.frame(REPLY) {
                Ok(Some((0x9, _))) => continue,
                Ok(Some((0x1, p))) => {
                    assert_eq!(String::from_utf8_lossy(&p), want);
                    return;
                }
                other => panic!("expected text {want:?}, got {other:?}"),
            }
        }
    }

    /// Reads until a close frame; returns (code, reason, pings seen before it). Panics if the
    /// connection ends without one or stays open past `limit`.
    fn close_frame(&mut self, limit: Duration) -> (u16, String, usize) {
        let deadline = Instant::now() + limit;
        let mut pings = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.frame(left) {
                Ok(Some((0x8, p))) => {
                    let code = if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    };
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                    return (code, reason, pings);
                }
                Ok(Some((0x9, _))) => pings += 1,
                Ok(Some(_)) => {}
                Ok(None) => panic!("no close frame within {limit:?}"),
                Err(e) => panic!("connection ended ({e:?}) without a close frame"),
            }
        }
    }

    /// Reads (discarding) until EOF or reset; `Eof::Open` if still open after `limit`.
    fn until_closed(&mut self, limit: Duration) -> Eof {
        let mut sink = Vec::new();
        read_until_closed(&mut self.s, &mut sink, limit).1
    }
}

fn have_addr(ip: &str) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

/// Runs `herald start` with `args` (plus a pid file, text and HTTP off) expecting it to fail;
/// returns its combined output.
fn start_must_fail(args: &[&str]) -> String {
    let dir = TempDir::new();
    let pid_file = dir.path.join("h.pid");
    let mut cmd = Command::new(BIN);
    cmd.arg("start")
        .args(args)
        .args([
            "--text",
            "off",
            "--http",
            "off",
            "--socketio",
            "off",
            "--pid-file",
        ])
        .arg(&pid_file)
        .current_dir(&dir.path)
        .env_remove("NOTIFY_SOCKET");
    let out = run_with_limit(&mut cmd, Duration::from_secs(10));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "herald start {args:?} succeeded; output:\n{text}"
    );
    text
}

#[test]
fn public_websocket_without_auth_or_with_a_short_secret_does_not_start() {
    let ws = format!("0.0.0.0:{}", free_port());
    let text = start_must_fail(&["--ws", &ws]);
    assert!(
        text.contains("auth"),
        "the refusal does not name `auth`:\n{text}"
    );
    for (mode, secret) in [("hmac", ""), ("jwt", "short-secret")] {
        let text = start_must_fail(&[
            "--ws",
            &format!("127.0.0.1:{}", free_port()),
            "--set",
            &format!("auth={mode}"),
            "--set",
            &format!("auth_secret={secret}"),
        ]);
        assert!(
            text.contains("auth_secret"),
            "auth={mode} with secret {secret:?}: the refusal does not name auth_secret:\n{text}"
        );
    }
    let text = start_must_fail(&[
        "--ws",
        &format!("127.0.0.1:{}", free_port()),
        "--set",
        "auth=password",
    ]);
    assert!(text.contains("auth"), "unknown auth mode accepted?\n{text}");
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

fn hmac_server() -> Server {
    Server::builder()
        .set("auth=hmac")
        .set(&format!("auth_secret={SECRET}"))
        .login_reply()
        .start()
}

#[test]
fn hmac_first_frame_valid_logs_in_forged_tampered_expired_are_refused_with_4001() {
    let mut srv = hmac_server();
    let exp = unix_now() + 300;
    let good = hmac_token(SECRET, "alice", exp);
    let mut alice = srv.ws_connect();
    alice.send_text(&good);
    assert_eq!(alice.recv_text(REPLY), "login success, your uid is alice");

    let forged = hmac_token("another-secret-of-some-length", "alice", exp);
    // Same signature, another uid (or another expiry): the signature covers both.
    let tampered_uid = good.replacen("alice", "admin", 1);
    let tampered_exp = good.replacen(&exp.to_string(), &(exp + 86400).to_string(), 1);
    let expired = hmac_token(SECRET, "alice", unix_now() - 10);
    let short_sig = {
        let mut t = good.clone();
        t.truncate(t.len() - 2);
        t
    };
    let cases = [
        ("forged", forged.clone()),
        ("tampered uid", tampered_uid),
        ("tampered expiry", tampered_exp),
        ("expired", expired.clone()),
        ("short signature", short_sig),
        ("plain uid (seed mode)", "alice".to_string()),
        ("garbage", "x.y.z".to_string()),
    ];
    let mut ports = Vec::new();
    for (what, token) in &cases {
        let mut c = srv.ws_connect();
        ports.push(c.tcp().local_addr().expect("addr").port());
        c.send_text(token);
        let got = close_of(&mut c, REPLY);
        assert_eq!(
            got.as_ref().map(|g| g.0),
            Some(4001),
            "{what} token: expected close 4001, got {got:?}"
        );
    }
    // Only the real alice receives pushes for alice.
    srv.still_serves(&mut alice, "alice", 1);
    let c = wait_counter(&mut srv, "auth_failed", cases.len() as u64, REPLY);
    assert!(c["auth_failed"] >= cases.len() as u64);
    // Refusals are logged with the remote address, never with the token or the secret.
    assert!(
        wait_until(REPLY, || {
            let log = srv.log();
            ports
                .iter()
                .all(|p| log.contains(&format!("127.0.0.1:{p}")))
        }),
        "refused logins are not logged with the remote address:\n{}",
        srv.log()
    );
    let log = srv.log();
    for (what, token) in cases.iter().take(5) {
        let sig = token.rsplit('.').next().unwrap_or("");
        assert!(
            !log.contains(sig),
            "the {what} token's signature appears in the log"
        );
    }
    assert!(!log.contains(&good), "the valid token appears in the log");
    assert!(!log.contains(SECRET), "auth_secret appears in the log");
}

#[test]
fn hmac_token_in_the_url_logs_in_at_the_handshake_and_a_bad_one_is_401() {
    let mut srv = hmac_server();
    let good = hmac_token(SECRET, "user.7", unix_now() + 300);
    // No frame sent: the login happened with the upgrade.
    let mut r = Raw::upgrade(srv.ws, &format!("/?token={}", url_encode(&good)), "");
    r.expect_text("login success, your uid is user.7");

    for (what, token) in [
        (
            "forged",
            hmac_token("not-the-secret-at-all!", "user.7", unix_now() + 300),
        ),
        ("expired", hmac_token(SECRET, "user.7", unix_now() - 5)),
        ("malformed", "nope".to_string()),
    ] {
        let mut c = Raw::connect(srv.ws);
        c.send(&upgrade_request(
            &format!("/?token={}", url_encode(&token)),
            "",
        ))
        .expect("send");
        let (code, head) = c.head(REPLY);
        assert_eq!(code, 401, "{what} URL token: {head}");
        assert_ne!(
            c.until_closed(REPLY),
            Eof::Open,
            "{what} URL token: connection left open after 401"
        );
    }
    // The logged-in connection gets pushes.
    let line = "{\"uid\":\"user.7\",\"n\":1}";
    assert_eq!(srv.text_push(format!("{line}\n").as_bytes()), b"ok\n");
    r.expect_text(line);
    wait_counter(&mut srv, "auth_failed", 3, REPLY);
}

#[test]
fn jwt_valid_logs_in_and_expired_forged_none_and_other_algorithms_are_refused() {
    use jsonwebtoken::Algorithm;
    use serde_json::json;
    let mut srv = Server::builder()
        .set("auth=jwt")
        .set(&format!("auth_secret={SECRET}"))
        .login_reply()
        .start();
    let now = unix_now();
    let good = jwt(
        SECRET,
        Algorithm::HS256,
        &json!({"sub": "jwt-user", "exp": now + 300}),
    );
    let mut ok = srv.ws_connect();
    ok.send_text(&good);
    assert_eq!(ok.recv_text(REPLY), "login success, your uid is jwt-user");

    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(format!(r#"{{"sub":"jwt-user","exp":{}}}"#, now + 300).as_bytes())
    );
    let cases = [
        (
            "expired",
            jwt(
                SECRET,
                Algorithm::HS256,
                &json!({"sub": "jwt-user", "exp": now - 60}),
            ),
        ),
        (
            "wrong key",
            jwt(
                "some-other-secret-0000",
                Algorithm::HS256,
                &json!({"sub": "jwt-user", "exp": now + 300}),
            ),
        ),
        ("alg none", none),
        (
            "HS512",
            jwt(
                SECRET,
                Algorithm::HS512,
                &json!({"sub": "jwt-user", "exp": now + 300}),
            ),
        ),
        (
            "no exp",
            jwt(SECRET, Algorithm::HS256, &json!({"sub": "jwt-user"})),
        ),
        (
            "no sub",
            jwt(SECRET, Algorithm::HS256, &json!({"exp": now + 300})),
        ),
    ];
    for (what, token) in &cases {
        let mut c = srv.ws_connect();
        c.send_text(token);
        let got = close_of(&mut c, REPLY);
        assert_eq!(
            got.as_ref().map(|g| g.0),
            Some(4001),
            "{what} JWT: expected close 4001, got {got:?}"
        );
    }
    // In the URL: valid logs in, expired is 401.
    let mut r = Raw::upgrade(srv.ws, &format!("/ws?token={good}"), "");
    r.expect_text("login success, your uid is jwt-user");
    let mut c = Raw::connect(srv.ws);
    c.send(&upgrade_request(&format!("/?token={}", cases[0].1), ""))
        .expect("send");
    assert_eq!(c.head(REPLY).0, 401, "expired JWT in the URL");

    let line = "{\"uid\":\"jwt-user\",\"n\":2}";
    assert_eq!(srv.text_push(format!("{line}\n").as_bytes()), b"ok\n");
    assert_eq!(ok.recv_text(REPLY), line);
    r.expect_text(line);
    wait_counter(&mut srv, "auth_failed", cases.len() as u64 + 1, REPLY);
    let log = srv.log();
    assert!(!log.contains(&good), "a JWT appears in the log");
    assert!(!log.contains(SECRET), "auth_secret appears in the log");
}

#[test]
fn php_hash_hmac_token_logs_in() {
    if !require("php", have_program("php")) {
        return;
    }
    let srv = hmac_server();
    let out = run_with_limit(
        Command::new("php")
            .arg(script("scripts/php/token.php"))
            .arg("php-user-42")
            .arg("300")
            .env("HERALD_AUTH_SECRET", SECRET),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "php token.php failed: {}",
        show(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        token.starts_with("php-user-42."),
        "unexpected token {token:?}"
    );
    let mut c = srv.ws_connect();
    c.send_text(&token);
    assert_eq!(c.recv_text(REPLY), "login success, your uid is php-user-42");
    // And in the URL.
    let mut r = Raw::upgrade(srv.ws, &format!("/?token={}", url_encode(&token)), "");
    r.expect_text("login success, your uid is php-user-42");
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

#[test]
fn no_login_and_unfinished_handshakes_are_closed_after_auth_timeout() {
    let mut srv = Server::builder()
        .set("auth_timeout=0.5")
        .login_reply()
        .start();
    let t0 = Instant::now();
    let mut mute = srv.ws_connect();
    // Slowloris: a handshake that never ends, and one that trickles a byte every 100 ms.
    let mut half = Raw::connect(srv.ws);
    half.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .expect("send");
    let mut trickle = Raw::connect(srv.ws);
    let trickler = std::thread::spawn(move || {
        let start = Instant::now();
        let junk = b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in junk.iter().cycle() {
            if trickle.send(&[*b]).is_err() {
                return Some(start.elapsed());
            }
            if trickle.until_closed(Duration::from_millis(100)) != Eof::Open {
                return Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(5) {
                return None;
            }
        }
        None
    });
    // A client that logs in in time stays.
    let mut keeper = srv.login_acked("keeper");

    let got = close_of(&mut mute, Duration::from_secs(4));
    let waited = t0.elapsed();
    assert_eq!(
        got,
        Some((1008, "login timeout".to_string())),
        "a websocket that never logged in"
    );
    assert!(
        waited >= Duration::from_millis(350),
        "closed after {waited:?}, before auth_timeout"
    );
    assert_ne!(
        half.until_closed(Duration::from_secs(3)),
        Eof::Open,
        "a half-sent handshake was not closed"
    );
    let trickled = trickler.join().expect("trickler");
    assert!(
        trickled.is_some(),
        "a handshake trickling a byte every 100 ms was never closed"
    );
    srv.still_serves(&mut keeper, "keeper", 1);
    wait_counter(&mut srv, "auth_timeout", 3, REPLY);
}

#[test]
fn pings_keep_answering_clients_and_silent_ones_are_closed_after_idle_timeout() {
    let mut srv = Server::builder()
        .set("ping_interval=0.3")
        .set("idle_timeout=1")
        .login_reply()
        .start();
    let mut alive = srv.login_acked("alive");
    // The silent client logs in, then only reads (a raw client never answers pings).
    let mut silent = Raw::login(srv.ws, "silent");
    let sent_last = Instant::now();
    let watcher = std::thread::spawn(move || {
        let got = silent.close_frame(Duration::from_secs(5));
        (got, sent_last.elapsed())
    });

    // tungstenite answers each ping when read again: the client stays through 2.5 idle periods.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match alive.recv(left) {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?} on the answering client"),
            Err(Ended::Timeout) => break,
            Err(Ended::Closed(why)) => {
                panic!("the client answering pings was closed after {pings} pings: {why}")
            }
        }
    }
    assert!(
        pings >= 3,
        "only {pings} pings in 2.5 s with ping_interval=0.3"
    );
    srv.still_serves(&mut alive, "alive", 1);

    let ((code, reason, silent_pings), after) = watcher.join().expect("watcher");
    assert_eq!(code, 1001, "silent client closed with {code} {reason:?}");
    assert!(
        silent_pings >= 1,
        "the silent client saw no ping before its close"
    );
    assert!(
        after >= Duration::from_millis(850) && after <= Duration::from_secs(4),
        "silent client closed {after:?} after its last frame (idle_timeout=1)"
    );
    wait_counter(&mut srv, "idle_closed", 1, REPLY);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn frames_and_messages_over_max_frame_are_closed_with_1009() {
    let mut srv = Server::builder()
        .set("max_frame=1024")
        .login_reply()
        .start();
    let mut watcher = srv.login_acked("watcher");

    let mut big = Raw::login(srv.ws, "big");
    big.send(&masked(true, 0x2, &[7u8; 1025])).expect("send");
    assert_eq!(big.close_frame(REPLY).0, 1009, "one 1025-byte frame");

    // Three 500-byte fragments: each fits, the message does not.
    let mut frag = Raw::login(srv.ws, "frag");
    frag.send(&masked(false, 0x1, &[b'a'; 500])).expect("send");
    frag.send(&masked(false, 0x0, &[b'a'; 500])).expect("send");
    frag.send(&masked(true, 0x0, &[b'a'; 500])).expect("send");
    assert_eq!(
        frag.close_frame(REPLY).0,
        1009,
        "a 1500-byte message in fragments"
    );

    // Exactly the limit is fine.
    let mut fits = srv.login_acked("fits");
    fits.ws
        .send(Message::binary(vec![1u8; 1024]))
        .expect("send");
    fits.roundtrip();
    srv.still_serves(&mut fits, "fits", 1);
    srv.still_serves(&mut watcher, "watcher", 2);
    wait_counter(&mut srv, "oversize", 2, REPLY);
}

#[test]
fn text_lines_over_max_line_close_the_connection() {
    let mut srv = Server::builder().set("max_line=1024").login_reply().start();
    let mut watcher = srv.login_acked("watcher");
    let mut c = TextConn::connect(srv.text);
    let mut line = b"{\"uid\":\"watcher\",\"pad\":\"".to_vec();
    line.resize(1100, b'p');
    line.extend_from_slice(b"\"}\n");
    c.send(&line);
    let (got, how) = c.read_until_closed(REPLY);
    assert_ne!(
        how,
        Eof::Open,
        "a 1100-byte line did not close the connection"
    );
    assert!(got.is_empty(), "reply to an over-long line: {}", show(&got));
    watcher.expect_silence(Duration::from_millis(200));
    srv.still_serves(&mut watcher, "watcher", 1);
    wait_counter(&mut srv, "oversize", 1, REPLY);
}

#[test]
fn http_bodies_over_max_body_get_413_and_heads_over_max_header_get_431() {
    let srv = Server::builder()
        .set("max_body=1024")
        .set("max_header=1024")
        .login_reply()
        .start();
    let mut watcher = srv.login_acked("watcher");

    // Declared too large: refused before the body is sent.
    let r = srv.http(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 1025\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{}", r.head);
    // Chunked, growing past the limit.
    let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
        Content-Type: application/x-www-form-urlencoded\r\n\r\n"
        .to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"258\r\n");
        req.extend_from_slice(&[b'a'; 0x258]);
        req.extend_from_slice(b"\r\n");
    }
    let mut c = HttpConn::connect(srv.http);
    let _ = c.send(&req);
    let r = c.read_response(REPLY);
    assert_eq!(r.status, 413, "chunked body of 1800 bytes: {}", r.head);
    // Exactly the limit is served.
    let body = format!("type=publish&to=watcher&content={}", "b".repeat(1024 - 32));
    assert_eq!(body.len(), 1024);
    let r = srv.http(&post_form(&body));
    assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{}", r.head);
    assert_eq!(watcher.recv_text(REPLY), "b".repeat(1024 - 32));

    // Headers over max_header, on the HTTP port and in a WebSocket handshake.
    let pad = format!("X-Pad: {}\r\n", "h".repeat(1100));
    let r = srv.http(format!("GET / HTTP/1.1\r\nHost: x\r\n{pad}\r\n").as_bytes());
    assert_eq!(r.status, 431, "{}", r.head);
    let mut w = Raw::connect(srv.ws);
    let _ = w.send(&upgrade_request("/", &pad));
    assert_eq!(w.head(REPLY).0, 431, "handshake with a 1.1 KB header");
    srv.still_serves(&mut watcher, "watcher", 1);
}

/// The limits' counter: bodies and heads over their limit should count in `oversize` like
/// frames and lines do (the `Stats::oversize` doc says "Frames, lines, bodies or heads").
#[test]
fn oversize_counts_http_bodies_and_heads_too() {
    let mut srv = Server::builder()
        .set("max_body=1024")
        .set("max_header=1024")
        .start();
    let before = status(&mut srv).0.get("oversize").copied().unwrap_or(0);
    let r = srv.http(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(r.status, 413);
    let pad = format!("X-Pad: {}\r\n", "h".repeat(1100));
    let r = srv.http(format!("GET / HTTP/1.1\r\nHost: x\r\n{pad}\r\n").as_bytes());
    assert_eq!(r.status, 431);
    let (c, text) = status(&mut srv);
    assert!(
        c.get("oversize").copied().unwrap_or(0) >= before + 2,
        "a 413 and a 431 did not move `oversize` (rejected = {:?}):\n{text}",
        c.get("rejected")
    );
}

/// Opens a connection to `port` that the server admits, retrying while it still counts
/// connections that were just closed (the harness's readiness probes, a dropped client).
fn admitted_ws(srv: &Server, uid: &str) -> Ws {
    let deadline = Instant::now() + REPLY;
    loop {
        let stream = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect");
        stream.set_read_timeout(Some(REPLY)).ok();
        if let Ok((ws, _)) = tungstenite::client(format!("ws://127.0.0.1:{}/", srv.ws), stream) {
            let mut c = Ws { ws };
            c.send_text(uid);
            assert_eq!(
                c.recv_text(REPLY),
                format!("login success, your uid is {uid}")
            );
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "no connection admitted within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn max_connections_refuses_with_503_on_ws_and_http_and_an_error_line_on_text() {
    let mut srv = Server::builder()
        .set("max_connections=3")
        .login_reply()
        .start();
    let mut held: Vec<Ws> = (0..3)
        .map(|i| admitted_ws(&srv, &format!("h{i}")))
        .collect();

    let mut w = Raw::connect(srv.ws);
    let _ = w.send(&upgrade_request("/", ""));
    let (code, head) = w.head(REPLY);
    assert_eq!(code, 503, "4th websocket: {head}");
    assert_ne!(
        w.until_closed(REPLY),
        Eof::Open,
        "refused websocket left open"
    );

    let r = srv.http(&get("/"));
    assert_eq!(r.status, 503, "http over max_connections: {}", r.head);

    let mut t = TextConn::connect(srv.text);
    let (line, _) = t.read_until_line(REPLY);
    let v: serde_json::Value = serde_json::from_slice(line.trim_ascii_end())
        .unwrap_or_else(|_| panic!("text refusal is not JSON: {}", show(&line)));
    assert!(v["error"].is_string(), "text refusal: {}", show(&line));
    assert_ne!(
        t.read_until_closed(REPLY).1,
        Eof::Open,
        "refused text conn left open"
    );

    let c = wait_counter(&mut srv, "over_max_connections", 3, REPLY);
    assert!(c["over_max_connections"] >= 3);
    // A freed place is given again.
    held.pop().expect("held").close();
    let mut again = admitted_ws(&srv, "again");
    let line = "{\"uid\":\"again\",\"n\":1}";
    drop(held.pop());
    // The text push needs a place too: retried until the dropped client is forgotten.
    let deadline = Instant::now() + REPLY;
    loop {
        let mut t = TextConn::connect(srv.text);
        t.send(format!("{line}\n").as_bytes());
        let (got, _) = t.read_until_line(REPLY);
        if got == b"ok\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "push never admitted: {}",
            show(&got)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(again.recv_text(REPLY), line);
}

#[test]
fn max_connections_per_ip_refuses_with_429_but_admits_another_address() {
    let mut srv = Server::builder()
        .set("max_connections_per_ip=2")
        .login_reply()
        .start();
    let mut a = admitted_ws(&srv, "ip-a");
    let _b = admitted_ws(&srv, "ip-b");

    let mut w = Raw::connect(srv.ws);
    let _ = w.send(&upgrade_request("/", ""));
    let (code, head) = w.head(REPLY);
    assert_eq!(code, 429, "3rd websocket from 127.0.0.1: {head}");
    let r = srv.http(&get("/"));
    assert_eq!(r.status, 429, "http from the same address: {}", r.head);
    let mut t = TextConn::connect(srv.text);
    let (line, _) = t.read_until_line(REPLY);
    assert!(
        line.starts_with(b"{\"error\":"),
        "text refusal: {}",
        show(&line)
    );
    wait_counter(&mut srv, "over_per_ip", 3, REPLY);

    if have_addr("127.0.0.2") {
        let mut other = Raw::connect_from("127.0.0.2", srv.ws, None).expect("connect from .2");
        other.send(&upgrade_request("/", "")).expect("send");
        assert_eq!(other.head(REPLY).0, 101, "another address was refused");
        other.send(&masked(true, 0x1, b"ip-c")).expect("send");
        other.expect_text("login success, your uid is ip-c");
    } else {
        eprintln!("note: 127.0.0.2 unavailable; per-address admission not checked");
    }
    // The held client still gets pushes (through a text connection from .2 when possible, as
    // 127.0.0.1 is full).
    let line = "{\"uid\":\"ip-a\",\"n\":1}";
    if have_addr("127.0.0.2") {
        let mut t = Raw::connect_from("127.0.0.2", srv.text, None).expect("connect from .2");
        t.send(format!("{line}\n").as_bytes()).expect("send");
        let mut got = Vec::new();
        let deadline = Instant::now() + REPLY;
        while !got.contains(&b'\n') && t.fill(deadline).unwrap_or(false) {
            got.append(&mut t.buf);
        }
        assert_eq!(got, b"ok\n");
        assert_eq!(a.recv_text(REPLY), line);
    }
}

#[test]
fn handshakes_from_origins_not_allowed_get_403() {
    let mut srv = Server::builder()
        .set(r#"allowed_origins=["http://good.example"]"#)
        .login_reply()
        .start();
    let mut good = Raw::upgrade(srv.ws, "/", "Origin: http://good.example\r\n");
    good.send(&masked(true, 0x1, b"o1")).expect("send");
    good.expect_text("login success, your uid is o1");
    for origin in [
        "http://evil.example",
        "http://good.example.evil.example",
        "https://good.example",
        "http://good.example:8080",
    ] {
        let mut c = Raw::connect(srv.ws);
        c.send(&upgrade_request("/", &format!("Origin: {origin}\r\n")))
            .expect("send");
        let (code, head) = c.head(REPLY);
        assert_eq!(code, 403, "Origin {origin}: {head}");
        assert_ne!(
            c.until_closed(REPLY),
            Eof::Open,
            "Origin {origin}: left open"
        );
    }
    wait_counter(&mut srv, "bad_origin", 4, REPLY);
}

// ---------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------

/// `n` raw clients, logged in as `{prefix}{i}`, with a 4 KiB receive buffer; after their login
/// reply they never read again.
fn never_readers(port: u16, n: usize, prefix: &str) -> Vec<Raw> {
    (0..n)
        .map(|i| {
            let mut r = Raw::connect_from("127.0.0.1", port, Some(4096)).expect("connect");
            r.send(&upgrade_request("/", "")).expect("send");
            assert_eq!(r.head(REPLY).0, 101);
            let uid = format!("{prefix}{i}");
            r.send(&masked(true, 0x1, uid.as_bytes())).expect("login");
            r.expect_text(&format!("login success, your uid is {uid}"));
            r
        })
        .collect()
}

/// Broadcasts `count` messages of `size` bytes through one text connection (written on a
/// thread, replies read here); returns when every reply has come.
fn broadcast(srv: &Server, count: usize, size: usize) {
    let mut c = TextConn::connect(srv.text);
    let mut w = c.stream.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_secs(30))).ok();
    let writer = std::thread::spawn(move || {
        for i in 0..count {
            let mut line = format!("{{\"cmd\":\"all\",\"data\":\"{i:06}").into_bytes();
            line.resize(22 + size, b'x');
            line.extend_from_slice(b"\"}\n");
            w.write_all(&line).expect("write broadcast");
        }
    });
    let replies = c.read_lines(count, Duration::from_secs(30));
    writer.join().expect("writer");
    assert!(
        replies
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .all(|l| l == b"ok"),
        "broadcast replies: {}",
        show(&replies)
    );
}

/// A tungstenite client that reads everything until text `END`; returns how many messages.
fn reader(srv: &Server, uid: &str) -> std::thread::JoinHandle<usize> {
    let mut c = srv.login_acked(uid);
    std::thread::spawn(move || {
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.recv(left) {
                Ok(Message::Text(t)) if t.as_str() == "END" => return n,
                Ok(Message::Text(_)) => n += 1,
                Ok(_) => {}
                Err(e) => panic!("reader {n} messages in, then {e:?}"),
            }
        }
    })
}

/// Pushes `END` to `uid` until it is accepted (its output may be over the cap a moment).
fn push_end(srv: &Server, uid: &str) {
    let line = format!("{{\"cmd\":\"push\",\"to\":\"{uid}\",\"data\":\"END\"}}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.text_push(line.as_bytes()) != b"ok\n" {
        assert!(Instant::now() < deadline, "END never accepted for {uid}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clients_that_never_read_do_not_raise_memory_past_the_cap_and_count_send_fail() {
    const CLIENTS: usize = 200;
    const PUSHES: usize = 1000;
    const SIZE: usize = 60_000; // one frame fits under max_send_buffer, two do not
    let mut srv = Server::builder()
        .set("max_send_buffer=65536")
        .set("slow_timeout=30")
        .login_reply()
        .start();
    let slow = never_readers(srv.ws, CLIENTS, "slow");
    let healthy = reader(&srv, "reader");
    // Warm up the worker's buffers (scratch, a line, a frame) before the baseline.
    broadcast(&srv, 3, SIZE);
    let baseline = workers_rss_kib(&srv);

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pids = srv.worker_pids();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(rss_kib(&pids));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let t0 = Instant::now();
    broadcast(&srv, PUSHES, SIZE);
    let took = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let peak = sampler.join().expect("sampler").max(workers_rss_kib(&srv));

    // Without the cap every slow client would keep all 1,000 shared frames queued: 57 MiB of
    // frames (plus 200,000 queue entries). With it, each client keeps at most one 60 KB
    // frame: at most 200 x 64 KiB = 12.5 MiB even if every client held a different frame.
    // 24 MiB leaves room for allocator slack and the text port's line buffer.
    let grown_kib = peak.saturating_sub(baseline);
    assert!(
        grown_kib < 24 * 1024,
        "worker RSS grew by {grown_kib} KiB (baseline {baseline} KiB, peak {peak} KiB) while \
         {PUSHES} x {SIZE} B went to {CLIENTS} clients that never read (broadcast took {took:?})"
    );
    let (c, text) = status(&mut srv);
    let fails = c.get("send_fail").copied().unwrap_or(0);
    assert!(
        fails >= (CLIENTS * PUSHES / 2) as u64,
        "send_fail {fails}: expected most of {CLIENTS} x {PUSHES} pushes dropped:\n{text}"
    );
    assert_eq!(
        c.get("slow_closed").copied().unwrap_or(0),
        0,
        "slow clients closed before slow_timeout=30:\n{text}"
    );
    push_end(&srv, "reader");
    let got = healthy.join().expect("reader thread");
    assert!(got > 0, "the reading client got no broadcast");
    drop(slow);
}

#[test]
fn clients_over_the_cap_for_slow_timeout_are_closed_and_readers_are_not() {
    const CLIENTS: usize = 50;
    let mut srv = Server::builder()
        .set("max_send_buffer=65536")
        .set("slow_timeout=1")
        .login_reply()
        .start();
    let mut slow = never_readers(srv.ws, CLIENTS, "late");
    let healthy = reader(&srv, "reader");
    // Broadcast on until the slow clients are closed: a client is over the cap only while
    // pushes keep coming for it (once the kernel has taken what it can, its queue stays full).
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(8);
    loop {
        broadcast(&srv, 5, 60_000);
        let (c, text) = status(&mut srv);
        let closed = c.get("slow_closed").copied().unwrap_or(0);
        if closed >= CLIENTS as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {closed} of {CLIENTS} clients that never read were closed after 8 s of \
             broadcasts with slow_timeout=1:\n{text}"
        );
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "slow clients closed {:?} after the broadcasts began (slow_timeout=1)",
        t0.elapsed()
    );
    // Each slow client, draining what the kernel holds, finds its connection closed.
    for (i, r) in slow.iter_mut().enumerate() {
        assert_ne!(
            r.until_closed(Duration::from_secs(3)),
            Eof::Open,
            "slow client {i} still open after slow_closed counted it"
        );
    }
    push_end(&srv, "reader");
    assert!(healthy.join().expect("reader") > 0);
}

// ---------------------------------------------------------------------------------------------
// push_secret
// ---------------------------------------------------------------------------------------------

#[test]
fn push_secret_is_required_on_the_text_port_and_never_reaches_a_client_or_the_log() {
    let mut srv = Server::builder()
        .set(&format!("push_secret={PUSH_SECRET}"))
        .set("log_level=debug")
        .login_reply()
        .start();
    let mut watcher = srv.login_acked("watcher");

    for first in [
        "{\"uid\":\"watcher\",\"n\":0}".to_string(),
        "{\"cmd\":\"auth\",\"secret\":\"wrong\"}".to_string(),
        format!("{{\"cmd\":\"auth\",\"secret\":\"{PUSH_SECRET}x\"}}"),
        format!("{{\"cmd\":\"auth\",\"secret\":\"{}\"}}", &PUSH_SECRET[..5]),
        "{\"cmd\":\"auth\"}".to_string(),
    ] {
        let mut c = TextConn::connect(srv.text);
        c.send(format!("{first}\n{{\"uid\":\"watcher\",\"n\":1}}\n").as_bytes());
        let (got, how) = c.read_until_closed(REPLY);
        assert_eq!(got, b"{\"error\":\"unauthorized\"}\n", "first line {first}");
        assert_ne!(how, Eof::Open, "first line {first}: connection left open");
    }
    watcher.expect_silence(Duration::from_millis(200));

    // The right secret; the auth line itself (even with a uid in it) is not pushed.
    let mut c = TextConn::connect(srv.text);
    c.send(
        format!(
            "{{\"cmd\":\"auth\",\"secret\":\"{PUSH_SECRET}\",\"uid\":\"watcher\"}}\n\
             {{\"uid\":\"watcher\",\"n\":2}}\n"
        )
        .as_bytes(),
    );
    assert_eq!(c.read_lines(2, REPLY), b"ok\nok\n");
    assert_eq!(watcher.recv_text(REPLY), "{\"uid\":\"watcher\",\"n\":2}");
    watcher.expect_silence(Duration::from_millis(200));

    wait_counter(&mut srv, "unauthorized", 5, REPLY);
    assert!(
        !srv.log().contains(PUSH_SECRET),
        "push_secret appears in the server log"
    );
}

#[test]
fn push_secret_is_required_on_http() {
    let mut srv = Server::builder()
        .set(&format!("push_secret={PUSH_SECRET}"))
        .set("log_level=debug")
        .login_reply()
        .start();
    let mut watcher = srv.login_acked("watcher");
    let req = |auth: &str| {
        format!(
            "GET /?type=publish&to=watcher&content=hello HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    for auth in [
        String::new(),
        "Authorization: Bearer wrong\r\n".to_string(),
        format!("Authorization: Basic {PUSH_SECRET}\r\n"),
        format!("Authorization: Bearer {PUSH_SECRET}0\r\n"),
        format!("Authorization: {PUSH_SECRET}\r\n"),
    ] {
        let r = srv.http(&req(&auth));
        assert_eq!(r.status, 401, "with {auth:?}: {}", r.head);
    }
    // The JSON API too.
    let body = "{\"to\":\"watcher\",\"data\":\"api\"}";
    let r = srv.http(
        format!(
            "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 401, "API push without the secret: {}", r.head);
    watcher.expect_silence(Duration::from_millis(200));

    let r = srv.http(&req(&format!("Authorization: Bearer {PUSH_SECRET}\r\n")));
    assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{}", r.head);
    assert_eq!(watcher.recv_text(REPLY), "hello");
    wait_counter(&mut srv, "unauthorized", 6, REPLY);
    assert!(
        !srv.log().contains(PUSH_SECRET),
        "push_secret appears in the server log"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

#[test]
fn protocol_violations_get_their_close_codes() {
    let mut srv = Server::builder().login_reply().start();
    let workers = srv.worker_pids();
    let mut watcher = srv.login_acked("watcher");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked text frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved data opcode 0x3", masked(true, 0x3, b"x"), 1002),
        ("reserved control opcode 0xB", masked(true, 0xB, b"x"), 1002),
        (
            "RSV1 without an extension",
            {
                let mut f = masked(true, 0x1, b"x");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("fragmented ping", masked(false, 0x9, b"x"), 1002),
        (
            "continuation without a message",
            masked(true, 0x0, b"x"),
            1002,
        ),
        (
            "bad UTF-8 text",
            masked(true, 0x1, &[b'o', 0xff, 0xfe, b'k']),
            1007,
        ),
        (
            "overlong UTF-8 encoding",
            masked(true, 0x1, &[0xc0, 0xaf]),
            1007,
        ),
        (
            "UTF-16 surrogate in UTF-8",
            masked(true, 0x1, &[0xed, 0xa0, 0x80]),
            1007,
        ),
        (
            "bad UTF-8 close reason",
            masked(true, 0x8, &[0x03, 0xe8, 0xff]),
            1007,
        ),
    ];
    for (what, bytes, code) in &cases {
        let mut r = Raw::login(srv.ws, "victim");
        r.send(bytes).expect("send");
        let (got, reason, _) = r.close_frame(REPLY);
        assert_eq!(got, *code, "{what}: closed with {got} {reason:?}");
        assert_ne!(
            r.until_closed(REPLY),
            Eof::Open,
            "{what}: left open after close"
        );
    }
    // Before login too: an unmasked login frame, bad UTF-8 as the login.
    let mut r = Raw::upgrade(srv.ws, "/", "");
    r.send(&[0x81, 0x03, b'u', b'i', b'd']).expect("send");
    assert_eq!(r.close_frame(REPLY).0, 1002, "unmasked login frame");
    let mut r = Raw::upgrade(srv.ws, "/", "");
    r.send(&masked(true, 0x1, &[0xff])).expect("send");
    assert_eq!(r.close_frame(REPLY).0, 1007, "bad UTF-8 login");

    srv.still_serves(&mut watcher, "watcher", 1);
    assert_eq!(srv.worker_pids(), workers, "a worker was replaced");
    wait_counter(&mut srv, "rejected", cases.len() as u64, REPLY);
}

#[test]
fn a_two_to_the_62_length_field_is_1009_without_a_memory_spike() {
    let mut srv = Server::builder().login_reply().start();
    let mut watcher = srv.login_acked("watcher");
    let before = workers_rss_kib(&srv);
    for (what, first) in [("2^62 binary", 0x82u8), ("2^62 text", 0x81)] {
        let mut r = Raw::login(srv.ws, "huge");
        let mut f = vec![first, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 62).to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(&[0u8; 1000]);
        r.send(&f).expect("send");
        assert_eq!(r.close_frame(REPLY).0, 1009, "{what}");
    }
    // 2^63 (most significant bit set, which RFC 6455 forbids): refused either way.
    let mut r = Raw::login(srv.ws, "huge");
    let mut f = vec![0x82, 0xff];
    f.extend_from_slice(&(1u64 << 63).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    r.send(&f).expect("send");
    let code = r.close_frame(REPLY).0;
    assert!(
        code == 1009 || code == 1002,
        "2^63 length closed with {code}"
    );
    // A 16-bit length just over max_frame, sent slowly: refused at its header, not buffered.
    let mut r = Raw::login(srv.ws, "huge");
    r.send(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 1, 9, 9, 9, 9])
        .expect("send");
    assert_eq!(r.close_frame(REPLY).0, 1009, "65537-byte frame header");

    let after = workers_rss_kib(&srv);
    assert!(
        after < before + 8 * 1024,
        "worker RSS went from {before} KiB to {after} KiB after oversized length fields"
    );
    srv.still_serves(&mut watcher, "watcher", 1);
    wait_counter(&mut srv, "oversize", 3, REPLY);
}

#[test]
fn http_request_smuggling_shapes_are_400_and_nothing_behind_them_runs() {
    let srv = Server::builder().login_reply().start();
    let mut watcher = srv.login_acked("watcher");
    let smuggled = "GET /?type=publish&to=watcher&content=smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunked_body = format!("0\r\n\r\n{smuggled}");
    let cases = [
        (
            "CL then TE",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}",
                chunked_body.len()
            ),
        ),
        (
            "TE then CL",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n{chunked_body}"
            ),
        ),
        (
            "duplicate CL, equal",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "duplicate CL, different",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "CL list",
            format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n{smuggled}"),
        ),
        (
            "TE not chunked last",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunked_body}"
            ),
        ),
        (
            "duplicate TE",
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}"
            ),
        ),
    ];
    for (what, req) in &cases {
        let mut c = HttpConn::connect(srv.http);
        c.send(req.as_bytes()).expect("send");
        let r = c.read_response(REPLY);
        assert_eq!(r.status, 400, "{what}: {}", r.head);
        let (rest, how) = c.read_until_closed(REPLY);
        assert_ne!(how, Eof::Open, "{what}: connection left open after 400");
        assert!(
            rest.is_empty(),
            "{what}: a second response: {}",
            show(&rest)
        );
    }
    watcher.expect_silence(Duration::from_millis(300));
    srv.still_serves(&mut watcher, "watcher", 1);
}

#[test]
fn nul_bytes_and_invalid_json_on_the_text_port_answer_fail() {
    let srv = Server::builder().login_reply().start();
    let mut watcher = srv.login_acked("watcher");
    let mut c = TextConn::connect(srv.text);
    let lines: [&[u8]; 8] = [
        b"\0\0\0\0",
        b"{\"uid\":\"watch\0er\"}",
        b"{\"uid\":\"watcher\"\0}",
        b"{\"uid\":",
        b"not json",
        b"[\"watcher\"]",
        b"\xff\xfe{\"uid\":\"watcher\"}",
        b"{\"uid\":\"watcher\",\"x\":\"a\0b\"}",
    ];
    let mut all = Vec::new();
    for l in lines {
        all.extend_from_slice(l);
        all.push(b'\n');
    }
    c.send(&all);
    let want: Vec<u8> = b"fail\n".repeat(lines.len());
    assert_eq!(
        c.read_lines(lines.len(), REPLY),
        want,
        "replies to NUL bytes and invalid JSON"
    );
    // The same connection still works.
    c.send(b"{\"uid\":\"watcher\",\"after\":1}\n");
    assert_eq!(c.read_lines(1, REPLY), b"ok\n");
    assert_eq!(
        watcher.recv_text(REPLY),
        "{\"uid\":\"watcher\",\"after\":1}"
    );
    watcher.expect_silence(Duration::from_millis(200));
}

#[test]
fn ten_thousand_connections_opened_and_dropped_at_once() {
    let srv = Server::builder().login_reply().start();
    let workers = srv.worker_pids();
    let mut watcher = srv.login_acked("watcher");
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let baseline: usize = workers.iter().map(|p| fds(*p)).sum();

    const PER_THREAD: usize = 1667;
    let ports = [srv.ws, srv.ws, srv.text, srv.text, srv.http, srv.http];
    let barrier = Arc::new(std::sync::Barrier::new(ports.len() + 1));
    let threads: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(k, &port)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut held = Vec::with_capacity(PER_THREAD);
                let mut failed = 0;
                for i in 0..PER_THREAD {
                    match TcpStream::connect(("127.0.0.1", port)) {
                        Ok(mut s) => {
                            // A third of them leave something half-sent behind.
                            if i % 3 == 0 {
                                s.set_nonblocking(true).ok();
                                let junk: &[u8] = match k / 2 {
                                    0 => b"GET / HTTP/1.1\r\nUpgrade: web",
                                    1 => b"{\"uid\":\"watcher\",\"half",
                                    _ => b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab",
                                };
                                let _ = s.write(junk);
                            }
                            held.push(s);
                        }
                        Err(_) => failed += 1,
                    }
                }
                barrier.wait(); // all open at once
                barrier.wait(); // then all dropped at once
                for s in &held {
                    let _ = s.shutdown(Shutdown::Both);
                }
                let n = held.len();
                drop(held);
                (n, failed)
            })
        })
        .collect();
    barrier.wait();
    barrier.wait();
    let mut opened = 0;
    let mut failed = 0;
    for t in threads {
        let (n, f) = t.join().expect("connector thread");
        opened += n;
        failed += f;
    }
    assert!(
        opened >= 10_000,
        "only {opened} connections opened ({failed} failed)"
    );
    // The server still answers, with the right bytes, and lets go of every socket.
    srv.still_serves(&mut watcher, "watcher", 1);
    assert!(
        wait_until(Duration::from_secs(10), || {
            workers.iter().map(|p| fds(*p)).sum::<usize>() <= baseline + 8
        }),
        "workers still hold {} fds (baseline {baseline}) after the connections dropped",
        workers.iter().map(|p| fds(*p)).sum::<usize>()
    );
    assert_eq!(srv.worker_pids(), workers, "a worker was replaced");
    srv.still_serves(&mut watcher, "watcher", 2);
    // Exact bytes of a larger push, too.
    let payload: String = (0..4000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let line = format!("{{\"cmd\":\"push\",\"to\":\"watcher\",\"data\":\"{payload}\"}}\n");
    assert_eq!(srv.text_push(line.as_bytes()), b"ok\n");
    assert_eq!(watcher.recv_text(REPLY), payload);
}

/// A seed line is pushed whole as a text frame, so a line with invalid UTF-8 anywhere in it is
/// not JSON (RFC 8259 requires UTF-8) and must be answered `fail`: pushing it would hand every
/// browser a text frame that is not UTF-8, which it must fail with 1007 (RFC 6455 8.1).
#[test]
fn invalid_utf8_in_a_seed_line_is_refused_not_pushed_as_a_text_frame() {
    let srv = Server::builder().login_reply().start();
    let mut watcher = srv.login_acked("watcher");
    for line in [
        &b"{\"uid\":\"watcher\",\"x\":\"\xc3\"}\n"[..],
        &b"{\"uid\":\"watcher\",\"x\":\"\xff\xfe\"}\n"[..],
        &b"{\"uid\":\"watcher\",\"\xed\xa0\x80\":1}\n"[..],
    ] {
        let reply = srv.text_push(line);
        let got = watcher.recv(Duration::from_millis(300));
        assert!(
            reply == b"fail\n" && matches!(got, Err(Ended::Timeout)),
            "line {}: reply {}, and the client got {got:?}",
            show(line),
            show(&reply)
        );
    }
    srv.still_serves(&mut watcher, "watcher", 1);
}

/// A client that floods ping frames and never reads must neither stall the worker (the other
/// connections are served meanwhile) nor make it queue an unbounded heap of pongs.
#[test]
fn a_client_flooding_pings_without_reading_neither_stalls_the_worker_nor_grows_its_memory() {
    let srv = Server::builder().login_reply().start();
    let mut watcher = srv.login_acked("watcher");
    let before = workers_rss_kib(&srv);
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Both log in before either floods (a flood can stall the other's handshake).
    let clients: Vec<Raw> = (0..2)
        .map(|i| Raw::login(srv.ws, &format!("flood{i}")))
        .collect();
    let flooders: Vec<_> = clients
        .into_iter()
        .map(|mut flood| {
            let stop = stop.clone();
            let flooded = flooded.clone();
            std::thread::spawn(move || {
                let ping = masked(true, 0x9, b"0123456789abcdef0123456789abcdef");
                let batch: Vec<u8> = ping.repeat(65536 / ping.len());
                flood
                    .s
                    .set_write_timeout(Some(Duration::from_millis(200)))
                    .ok();
                let start = Instant::now();
                let mut sent = 0usize;
                while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(6) {
                    match flood.s.write(&batch) {
                        Ok(n) => {
                            sent += n;
                            flooded.fetch_add(n, Ordering::SeqCst);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                sent
            })
        })
        .collect();
    // Push only once the flood is under way: both flooders have written 4 MiB between them.
    assert!(
        wait_until(Duration::from_secs(5), || flooded.load(Ordering::SeqCst)
            >= 4 << 20),
        "the flood never got going"
    );
    // While the flood goes on, a push on another connection is answered and delivered.
    let line = "{\"uid\":\"watcher\",\"during\":\"flood\"}";
    let mut t = TextConn::connect(srv.text);
    t.send(format!("{line}\n").as_bytes());
    let t0 = Instant::now();
    let (reply, _) = t.read_until_line(Duration::from_secs(3));
    let waited = t0.elapsed();
    let during = workers_rss_kib(&srv);
    stop.store(true, Ordering::SeqCst);
    let sent: usize = flooders
        .into_iter()
        .map(|f| f.join().expect("flooder"))
        .sum();
    let grown = during.saturating_sub(before);
    assert!(
        reply == b"ok\n" && grown < 64 * 1024,
        "while two clients flooded {sent} bytes of pings without reading: a push got {} after \
         {waited:?}, and worker RSS grew by {grown} KiB",
        show(&reply)
    );
    assert_eq!(watcher.recv_text(REPLY), line);
}

#[test]
fn pings_are_spread_over_the_interval_not_sent_in_one_burst() {
    // ping_interval=1 with these defaults gives a 250 ms sweep: a quarter of the connections
    // per sweep. All at once, 10,000 pings would hold up pushes for tens of milliseconds.
    let srv = Server::builder()
        .set("ping_interval=1")
        .login_reply()
        .start();
    let clients: Vec<Ws> = (0..8).map(|i| srv.login_acked(&format!("p{i}"))).collect();
    let start = Instant::now();
    let firsts: Vec<Duration> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || loop {
                match c.recv(Duration::from_secs(3)) {
                    Ok(Message::Ping(_)) => return start.elapsed(),
                    Ok(_) => {}
                    Err(e) => panic!("no ping within 3 s: {e:?}"),
                }
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("reader"))
        .collect();
    let (min, max) = (
        firsts.iter().min().copied().unwrap_or_default(),
        firsts.iter().max().copied().unwrap_or_default(),
    );
    assert!(
        max < Duration::from_millis(1600),
        "a connection waited {max:?} for its first ping"
    );
    assert!(
        max - min >= Duration::from_millis(300),
        "the first pings of 8 connections came within {:?} of each other: {firsts:?}",
        max - min
    );
}
