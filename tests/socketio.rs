//! The Socket.IO port (issue 7) with the real `socket.io-client` packages, 2.x (Engine.IO 3)
//! and 4.x (Engine.IO 4), under Node: every transport choice (polling then upgrade,
//! WebSocket only, polling only), logging in as the seed's page does, receiving `new_msg`
//! from the seed's HTTP publish API and from the text port, and `update_online_count`, with
//! three workers so a session's requests land on workers that do not own it (their
//! connections are handed over; the test checks that this happened).
//!
//! Node and `scripts/node/node_modules` are required under CI (`.ci/run` installs them);
//! elsewhere the tests print a skip note when they are missing.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn node_ready() -> bool {
    require("node", have_program("node"))
        && require(
            "socket.io-client packages (npm ci in scripts/node)",
            workspace_root()
                .join("scripts/node/node_modules/socket.io-client-v4/package.json")
                .exists()
                && workspace_root()
                    .join("scripts/node/node_modules/socket.io-client-v2/package.json")
                    .exists(),
        )
}

/// One `node scripts/node/sio-client.js` process and the lines it prints.
struct SioClient {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl SioClient {
    fn spawn(version: &str, transports: &str, port: u16, uid: &str) -> SioClient {
        let mut child = Command::new("node")
            .arg(workspace_root().join("scripts/node/sio-client.js"))
            .args([
                version,
                transports,
                &format!("http://127.0.0.1:{port}"),
                uid,
                "0",
                "60000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        let out = child.stdout.take().expect("stdout");
        let rx = lines_of(out);
        SioClient {
            child,
            lines: rx,
            name: format!("{version}/{transports}/{uid}"),
        }
    }

    /// Waits for a line starting with `word`, returning it; panics at the deadline.
    fn wait_for(&self, word: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.split(' ').next() == Some(word) => return l,
                Ok(_) => {}
                Err(_) => panic!("{}: no `{word}` line within {limit:?}", self.name),
            }
        }
    }

    /// Waits for an `online` line whose page count is `pages`.
    fn wait_online(&self, pages: usize, limit: Duration) {
        let want = format!("共打开<b>{pages}</b>个页面");
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("online ") && l.ends_with(&want) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no online count of {pages} pages within {limit:?}",
                    self.name
                ),
            }
        }
    }
}

impl Drop for SioClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(srv: &Server, to: &str, content: &str) -> String {
    let body = format!("type=publish&to={to}&content={content}");
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = srv.http(req.as_bytes());
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Sum of a status counter over the workers, from `GET /api/stats`.
fn stat(srv: &Server, key: &str) -> u64 {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["totals"][key]
        .as_u64()
        .or_else(|| {
            v["workers"]
                .as_array()
                .map(|w| w.iter().filter_map(|r| r[key].as_u64()).sum())
        })
        .unwrap_or(0)
}

#[test]
fn seed_page_clients_v2_and_v4_on_every_transport_across_three_workers() {
    if !node_ready() {
        return;
    }
    let srv = Server::builder().workers(3).socketio().start();
    srv.wait_mesh();
    let mut clients = Vec::new();
    for version in ["v2", "v4"] {
        for transports in ["default", "websocket", "polling"] {
            for n in 0..2 {
                let uid = format!("{version}-{transports}-{n}");
                clients.push((
                    uid.clone(),
                    SioClient::spawn(version, transports, srv.socketio, &uid),
                ));
            }
        }
    }
    for (_, c) in &clients {
        c.wait_for("connect", Duration::from_secs(30));
    }
    // Every page is counted, on every page (logins may still be on their way: wait for it).
    for (_, c) in &clients {
        c.wait_online(clients.len(), Duration::from_secs(20));
    }
    // The seed's publish API reaches each uid as `new_msg`, HTML-escaped, whichever worker
    // the request entered and whichever worker owns the session.
    for (uid, c) in &clients {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = publish(&srv, uid, "hi%20%3Cb%3E");
            if r == "ok" {
                break;
            }
            assert_eq!(r, "offline");
            assert!(Instant::now() < deadline, "{uid} never online");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            c.wait_for("new_msg", Duration::from_secs(10)),
            "new_msg hi &lt;b&gt;"
        );
    }
    // The text port reaches them too (one registry), and a broadcast reaches all.
    let (uid0, c0) = &clients[0];
    let line = format!("{{\"uid\":\"{uid0}\",\"percent\":\"88%\"}}\n");
    assert_eq!(srv.text_push(line.as_bytes()), b"ok\n");
    assert_eq!(
        c0.wait_for("new_msg", Duration::from_secs(10)),
        format!("new_msg {}", line.trim_end())
    );
    assert_eq!(publish(&srv, "", "all"), "ok");
    for (_, c) in &clients {
        assert_eq!(
            c.wait_for("new_msg", Duration::from_secs(10)),
            "new_msg all"
        );
    }
    assert_eq!(publish(&srv, "nobody", "x"), "offline");
    // The seed's PHP backend call (curl, multipart) from scripts/socketio/send.php.
    if require("php with curl", have_program("php")) {
        let (uid1, c1) = &clients[1];
        let url = format!("http://127.0.0.1:{}/", srv.http);
        let out = run_with_limit(
            Command::new("php").args([
                workspace_root()
                    .join("scripts/socketio/send.php")
                    .to_string_lossy()
                    .as_ref(),
                uid1,
                "数据",
                &url,
            ]),
            Duration::from_secs(20),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "'ok'\n");
        assert_eq!(
            c1.wait_for("new_msg", Duration::from_secs(10)),
            "new_msg 数据"
        );
    }
    // SO_REUSEPORT spread the sessions' requests: some reached a worker that did not own the
    // session and were handed over.
    assert!(stat(&srv, "handed_off") > 0, "no request was handed over");
    assert_eq!(stat(&srv, "handed_off"), stat(&srv, "adopted"));
    // A page that goes away (its WebSocket closes) leaves the counts.
    let (_, gone) = clients
        .iter()
        .position(|(u, _)| u == "v4-websocket-0")
        .map(|i| clients.remove(i))
        .expect("client");
    drop(gone);
    for (_, c) in &clients {
        c.wait_online(clients.len(), Duration::from_secs(10));
    }
}

#[test]
fn malformed_engine_io_requests_get_protocol_errors() {
    let client_js = workspace_root().join("scripts/herald.toml.example");
    let srv = Server::builder()
        .workers(2)
        .socketio()
        .set(&format!("socketio_client={}", client_js.display()))
        .start();
    let ask = |req: &[u8]| http(srv.socketio, req);
    // The configured client build is served where the seed's page loads it from.
    let r = ask(b"GET /socket.io/socket.io.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read(&client_js).expect("read"));
    let r = ask(b"GET /socket.io/?EIO=9&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        br#"{"code":5,"message":"Unsupported protocol version"}"#
    );
    let r = ask(b"GET /socket.io/?EIO=4&transport=carrier-pigeon HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.body, br#"{"code":0,"message":"Transport unknown"}"#);
    let r = ask(b"GET /socket.io/?EIO=4&transport=polling&sid=nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.body, br#"{"code":1,"message":"Session ID unknown"}"#);
    let r = ask(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 404);
    // A real handshake, then garbage in its POST: refused, and the session is gone.
    let r = ask(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: http://page.example\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("http://page.example")
    );
    let body = String::from_utf8(r.body).expect("utf-8");
    assert!(body.starts_with("0{\"sid\":\""), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body[1..]).expect("open packet");
    let sid = v["sid"].as_str().expect("sid").to_string();
    assert_eq!(v["upgrades"], serde_json::json!(["websocket"]));
    let bad = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n9zz"
    );
    // Whichever worker gets it, the owner answers (the connection is handed over).
    let r = ask(bad.as_bytes());
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let again =
        format!("GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        ask(again.as_bytes()).body,
        br#"{"code":1,"message":"Session ID unknown"}"#
    );
    // The port still serves.
    let r = ask(b"GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body).expect("utf-8");
    assert!(
        body.ends_with("2:40"),
        "v3 joins the namespace at once: {body}"
    );
}

#[test]
fn login_event_carries_a_checked_token_in_hmac_mode() {
    if !node_ready() {
        return;
    }
    let secret = "socket-io-test-secret-0123456789";
    let srv = Server::builder()
        .socketio()
        .set("auth=\"hmac\"")
        .set(&format!("auth_secret=\"{secret}\""))
        .start();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let good = SioClient::spawn(
        "v4",
        "websocket",
        srv.socketio,
        &hmac_token(secret, "alice", exp),
    );
    let forged = SioClient::spawn(
        "v2",
        "polling",
        srv.socketio,
        &hmac_token("wrong", "mallory", exp),
    );
    good.wait_for("connect", Duration::from_secs(30));
    forged.wait_for("connect", Duration::from_secs(30));
    // The token's uid is logged in; the forged one is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    while publish(&srv, "alice", "secret-ok") != "ok" {
        assert!(Instant::now() < deadline, "alice never logged in");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        good.wait_for("new_msg", Duration::from_secs(10)),
        "new_msg secret-ok"
    );
    // The forged login is refused once the server has read it (counted), and never logs in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&srv, "auth_failed") < 1 {
        assert!(
            Instant::now() < deadline,
            "the forged login was never refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(publish(&srv, "mallory", "x"), "offline");
}

/// Opens a v4 polling session and joins the default namespace, so that a poll has a packet to
/// answer at once (the namespace's connect reply); returns its sid.
fn polling_session(srv: &Server) -> String {
    let r = http(
        srv.socketio,
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.head);
    let body = String::from_utf8(r.body).expect("utf-8");
    let v: serde_json::Value = serde_json::from_str(&body[1..]).expect("open packet");
    let sid = v["sid"].as_str().expect("sid").to_string();
    let join = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 2\r\n\r\n40"
    );
    let r = http(srv.socketio, join.as_bytes());
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"ok"[..]),
        "{}",
        r.head
    );
    sid
}

/// Two polls pipelined on one connection, for sessions owned by two different workers: the
/// connection changes hands between them, and the answer to the first (already written by the
/// worker that served it) must not be lost on the way. A POST over the polling limit for
/// another worker's session is the owner's 400, not "Session ID unknown".
#[test]
fn pipelined_requests_for_sessions_of_two_workers_are_both_answered() {
    use herald_worker::proto::engineio::sid_worker;
    let srv = Server::builder().workers(3).socketio().start();
    srv.wait_mesh();
    let first = polling_session(&srv);
    let second = (0..50)
        .map(|_| polling_session(&srv))
        .find(|s| sid_worker(s) != sid_worker(&first))
        .expect("the kernel spread handshakes over several workers");
    let poll = |sid: &str| {
        format!("GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\r\n")
    };
    for _ in 0..5 {
        // Fresh sessions each round: their connect replies are what the polls return.
        let a = polling_session(&srv);
        let b = (0..50)
            .map(|_| polling_session(&srv))
            .find(|s| sid_worker(s) != sid_worker(&a))
            .expect("a session on another worker");
        let mut c = HttpConn::connect(srv.socketio);
        c.send(format!("{}{}", poll(&a), poll(&b)).as_bytes())
            .expect("write two polls");
        for sid in [&a, &b] {
            let r = c.read_response(REPLY);
            assert_eq!(r.status, 200, "poll for {sid}: {}", r.head);
            let body = String::from_utf8_lossy(&r.body).into_owned();
            assert!(body.starts_with("40{\"sid\":"), "poll for {sid}: {body}");
        }
    }
    // The owner closes a session that sent too much: a fresh one for each try, so that some
    // tries land on a worker that does not own it.
    let big = "4".repeat(100_001);
    for i in 0..8 {
        let sid = if i == 0 {
            second.clone()
        } else {
            polling_session(&srv)
        };
        let post = format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        );
        let r = http(srv.socketio, post.as_bytes());
        assert_eq!(r.status, 400, "{}", r.head);
        assert_ne!(r.body, br#"{"code":1,"message":"Session ID unknown"}"#);
    }
}

/// A cluster of two nodes on a real `redis-server`: a socket.io-client v4 page on each node
/// gets the seed's publish entering the other node, and the online count covers both nodes.
#[test]
fn socketio_pages_on_two_nodes_of_a_cluster() {
    if !node_ready() || !Redis::available() {
        return;
    }
    let redis = Redis::start();
    let node = |name: &str| {
        let srv = Server::builder()
            .workers(2)
            .socketio()
            .set(&format!("cluster=\"{}\"", redis.url()))
            .set(&format!("node_id={name}"))
            .start();
        srv.wait_mesh();
        srv
    };
    let a = node("sio-a");
    let b = node("sio-b");
    let on_a = SioClient::spawn("v4", "default", a.socketio, "page-a");
    let on_b = SioClient::spawn("v4", "websocket", b.socketio, "page-b");
    on_a.wait_for("connect", Duration::from_secs(30));
    on_b.wait_for("connect", Duration::from_secs(30));
    // One page on each node: both see two.
    on_a.wait_online(2, Duration::from_secs(20));
    on_b.wait_online(2, Duration::from_secs(20));
    for (entry, uid, page) in [(&a, "page-b", &on_b), (&b, "page-a", &on_a)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while publish(entry, uid, "across") != "ok" {
            assert!(
                Instant::now() < deadline,
                "{uid} never reachable across nodes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            page.wait_for("new_msg", Duration::from_secs(10)),
            "new_msg across"
        );
    }
}

/// A Socket.IO page on the WebSocket transport that stops reading is a slow consumer like any
/// WebSocket: over `max_send_buffer` for `slow_timeout`, it is closed and counted.
#[test]
fn a_socketio_websocket_that_stops_reading_is_closed_as_slow() {
    let srv = Server::builder()
        .workers(1)
        .socketio()
        .set("max_send_buffer=65536")
        .set("client_sndbuf=4096")
        .set("slow_timeout=1")
        .start();
    let stream = std::net::TcpStream::connect(("127.0.0.1", srv.socketio)).expect("connect");
    stream.set_read_timeout(Some(REPLY)).ok();
    let url = format!(
        "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket",
        srv.socketio
    );
    let (mut ws, _) = tungstenite::client(url, stream).expect("engine.io websocket");
    let open = ws.read().expect("open packet");
    assert!(open.to_string().starts_with("0{"), "{open}");
    ws.send(tungstenite::Message::text("40")).expect("connect");
    ws.send(tungstenite::Message::text(r#"42["login","slow-page"]"#))
        .expect("login");
    // Logged in once a publish to it answers ok; from then on the page reads nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while publish(&srv, "slow-page", "x") != "ok" {
        assert!(Instant::now() < deadline, "the page never logged in");
        std::thread::sleep(Duration::from_millis(20));
    }
    let big = "y".repeat(4000);
    let closed = wait_until(Duration::from_secs(15), || {
        for _ in 0..20 {
            publish(&srv, "slow-page", &big);
        }
        stat(&srv, "slow_closed") >= 1
    });
    assert!(
        closed,
        "a Socket.IO page that reads nothing was never closed as slow"
    );
    drop(ws);
}
