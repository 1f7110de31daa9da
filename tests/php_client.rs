//! The PHP package `herald/herald-client` (clients/php) end to end: its test runner
//! (`clients/php/tests/run.php`) loads the package through Composer's own autoloader, made by
//! `composer dump-autoload` in a copy of the package, and calls every method against the real
//! server (3 workers, a push secret) while WebSocket clients logged in on different workers
//! hold the uids it pushes to; the test checks what the script printed and what each client
//! received. Tokens made by the package log in on real servers in `hmac` and `jwt` mode, and
//! the refused ones are refused.
//!
//! Needs `php` (Debian `php-cli`) and `composer` (Debian `composer`): missing, the tests fail
//! under CI=true and otherwise skip with a note.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// What a WebSocket client received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum M {
    /// A text frame.
    T(String),
    /// A binary frame.
    B(Vec<u8>),
    /// A close frame with this code.
    Close(u16),
}

fn t(s: &str) -> M {
    M::T(s.to_owned())
}

/// The next message (pings and pongs skipped); panics if none arrives within `REPLY`.
fn next(ws: &mut Ws) -> M {
    let deadline = Instant::now() + REPLY;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.recv(left) {
            Ok(Message::Text(s)) => return M::T(s.as_str().to_owned()),
            Ok(Message::Binary(b)) => return M::B(b.to_vec()),
            Ok(Message::Close(f)) => return M::Close(f.map(|f| u16::from(f.code)).unwrap_or(0)),
            Ok(_) => continue,
            Err(e) => panic!("no message within {REPLY:?}: {e:?}"),
        }
    }
}

/// Messages up to and including the text `end` or a close frame.
fn until_end(ws: &mut Ws) -> Vec<M> {
    let mut out = Vec::new();
    loop {
        let m = next(ws);
        let done = m == t("end") || matches!(m, M::Close(_));
        out.push(m);
        if done || out.len() > 1000 {
            return out;
        }
    }
}

/// Sends `uid` as the login frame and waits for the login reply.
fn login(ws: &mut Ws, uid: &str) {
    ws.send_text(uid);
    assert_eq!(
        ws.recv_text(REPLY),
        format!("login success, your uid is {uid}")
    );
}

/// Whether php and composer are here (under CI their absence is a failure).
fn have_php_and_composer() -> bool {
    require("php (apt install php-cli)", have_program("php"))
        && require("composer (apt install composer)", have_program("composer"))
}

/// A copy of clients/php in `dir` with Composer's autoloader made for it; returns the copy.
fn composer_copy(dir: &Path) -> PathBuf {
    let src = workspace_root().join("clients/php");
    let dst = dir.join("herald-client");
    copy_tree(&src, &dst);
    let out = run_with_limit(
        Command::new("composer")
            .args(["dump-autoload", "--no-interaction", "--no-ansi"])
            .current_dir(&dst)
            .env("COMPOSER_HOME", dir.join("composer-home"))
            .env("COMPOSER_ALLOW_SUPERUSER", "1")
            .env("COMPOSER_DISABLE_NETWORK", "1"),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && dst.join("vendor/autoload.php").exists(),
        "composer dump-autoload failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dst
}

/// Copies the files of `src` into `dst` (without a `vendor/` left by a local run).
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    for entry in fs::read_dir(src).expect("read clients/php") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "vendor" {
            continue;
        }
        let (from, to) = (entry.path(), dst.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).expect("copy");
        }
    }
}

/// Opens WebSocket connections (not logged in) until each worker holds one; returns one per
/// worker. The extra ones are closed.
fn one_per_worker(srv: &Server) -> Vec<Ws> {
    let pids: Vec<u32> = srv.worker_pids().into_iter().collect();
    assert_eq!(pids.len(), srv.workers, "worker processes");
    let set: BTreeSet<u32> = pids.iter().copied().collect();
    let mut out: Vec<Option<Ws>> = pids.iter().map(|_| None).collect();
    for _ in 0..300 {
        if out.iter().all(Option::is_some) {
            break;
        }
        let ws = srv.ws_connect();
        let owner = Owners::snapshot(&set)
            .owner(ws.tcp())
            .expect("a worker holds the connection");
        let i = pids.iter().position(|p| *p == owner).expect("a worker");
        if out[i].is_none() {
            out[i] = Some(ws);
        }
    }
    out.into_iter()
        .map(|w| w.expect("the kernel never spread connections over all workers"))
        .collect()
}

/// `Server::wait_mesh` for a server with a push secret: the probe pushes authenticate first.
fn wait_mesh_auth(srv: &Server, secret: &str) {
    let mut probe = srv.ws_connect();
    login(&mut probe, "mesh-probe");
    let bytes = format!(
        "{{\"cmd\":\"auth\",\"secret\":\"{secret}\"}}\n{{\"uid\":\"mesh-probe\",\"probe\":true}}\n"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    while in_a_row < 10 * srv.workers {
        let reply = srv.text_push(bytes.as_bytes());
        if reply == b"ok\nok\n" {
            in_a_row += 1;
        } else {
            assert_eq!(reply, b"ok\nfail\n", "probe push");
            in_a_row = 0;
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(Instant::now() < deadline, "mesh not up within 15 s");
    }
    probe.close();
}

/// What run.php prints in `text` mode (the history line aside, checked on its own).
const WANT: &str = r#"online pc-a: true
online pc-off: false
sendToUid pc-a: true
sendToUids [pc-a,pc-b]: true
sendToUid pc-off: false
push pc-b: true
joinGroup pc-a g: true
joinGroup pc-b g: true
count g: {"connections":2,"uids":2}
getUidList g: ["pc-a","pc-b"]
getGroups: {"g":2}
sendToGroup g exclude pc-b: true
sendToGroup empty: false
sendToAll exclude pc-a: true
sendToAll binary: true
leaveGroup pc-b g: true
count g: {"connections":1,"uids":1}
count: {"connections":3,"uids":3}
getUidList: ["pc-a","pc-b","pc-c"]
wasPartial: false
ungroup g: true
getGroups: {}
HISTORY
call nope: UnknownCommandException: unknown cmd `nope`
joinGroup empty group: ServerException: `group` must be a non-empty string
online pc-a after errors: true
pipeline flags: "FLAGS"
pipeline error: "missing `to`"
pipeline queries: [{"connections":3,"uids":3},["pc-a","pc-b","pc-c"],true,[]]
pipeline empty: {}
pipeline 5000 online: true
online pc-a after the server closed: true
reconnects: 1
pipeline with a line over max_line: "Herald\\ConnectionException after reconnecting"
online pc-a after that: true
wrong push secret: AuthenticationException: authentication failed: unauthorized
no push secret: AuthenticationException: unauthorized
connection refused: "Herald\\ConnectionException caught as ConnectionException"
silent server: "TimeoutException, a ConnectionException, after the timeout"
http publish pc-a: "ok"
http publish pc-off: "offline"
http pushToUid pc-a: 1
http pushToUid [pc-a,pc-b]: 2
http joinGroup pc-b h: true
http groups: {"h":1}
http pushToGroup h: 1
http leaveGroup pc-b h: true
http ungroup h: true
http pushToAll exclude pc-a,pc-c: 1
http online pc-a: {"online":true,"connections":1}
http online pc-off: {"online":false,"connections":0}
http uids: {"uids":["pc-a","pc-b","pc-c"],"count":3,"connections":3}
http stats has totals: true
http no such endpoint: "404 no such endpoint: /api/nope"
http bad push: ServerException: give exactly one of `to`, `group` or `"all": true`
http wrong secret: "AuthenticationException 401"
kick pc-c: true
kick pc-off: false
http kick pc-off: 0
done
"#;

#[test]
fn package_every_method_against_three_workers() {
    if !have_php_and_composer() {
        return;
    }
    let secret = "pc-secret";
    let srv = Server::builder()
        .workers(3)
        .login_reply()
        .set(&format!("push_secret={secret}"))
        .set("auth_timeout=60")
        // With a history: every answer below is the same, and `history` has a real answer.
        .set("history_size=10")
        .start();
    wait_mesh_auth(&srv, secret);
    let mut clients = one_per_worker(&srv);
    for (c, uid) in clients.iter_mut().zip(["pc-a", "pc-b", "pc-c"]) {
        login(c, uid);
    }
    let dir = TempDir::new();
    let pkg = composer_copy(&dir.path);

    let out = run_with_limit(
        Command::new("php")
            .arg(pkg.join("tests/run.php"))
            .arg("text")
            .env("HERALD_TEXT_PORT", srv.text.to_string())
            .env("HERALD_HTTP_PORT", srv.http.to_string())
            .env("HERALD_PUSH_SECRET", secret)
            .env("HERALD_AUTOLOAD", pkg.join("vendor/autoload.php")),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("run.php stderr:\n{stderr}");
    assert!(
        out.status.success(),
        "run.php failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // `history`: what the server keeps for pc-a, the four messages aimed at it (a push, a
    // push to a list, a group push, the binary broadcast; not the broadcast that excluded
    // it), in order, with growing offsets.
    let history = stdout
        .lines()
        .find(|l| l.starts_with("history pc-a: "))
        .unwrap_or("history line missing")
        .to_owned();
    let h: serde_json::Value = serde_json::from_str(&history["history pc-a: ".len()..])
        .unwrap_or_else(|e| panic!("{history}: {e}"));
    assert_eq!(h["uid"], "pc-a", "{history}");
    let msgs = h["messages"].as_array().expect("messages");
    let data: Vec<&str> = msgs.iter().filter_map(|m| m["data"].as_str()).collect();
    assert_eq!(
        data,
        ["hello a", "{\"n\":1}", "to the group", "AAEC/w=="],
        "{history}"
    );
    let offsets: Vec<u64> = msgs.iter().filter_map(|m| m["offset"].as_u64()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{history}");
    assert_eq!(h["offset"].as_u64(), offsets.last().copied(), "{history}");
    let flags = format!("{}E{}", "tf".repeat(50), "tf".repeat(50));
    let want = WANT.replace("HISTORY", &history).replace("FLAGS", &flags);
    assert_eq!(stdout, want, "run.php output (stderr: {stderr})");

    // What the clients received, up to an end marker pushed to everyone last.
    let mut tc = TextConn::connect(srv.text);
    tc.send(
        format!(
            "{{\"cmd\":\"auth\",\"secret\":\"{secret}\"}}\n{{\"cmd\":\"all\",\"data\":\"end\"}}\n"
        )
        .as_bytes(),
    );
    assert_eq!(tc.read_lines(2, REPLY), b"ok\nok\n");
    let bin = M::B(vec![0, 1, 2, 255]);
    let mut want_b = vec![
        t(r#"{"n":1}"#),
        t(r#"{"uid":"pc-b","percent":"88%"}"#),
        t("to all"),
        bin.clone(),
    ];
    want_b.extend((0..100).map(|i| t(&format!("p{i}"))));
    want_b.extend([t("api both"), t("api group"), M::B(vec![5, 6]), t("end")]);
    assert_eq!(
        until_end(&mut clients[0]),
        [
            t("hello a"),
            t(r#"{"n":1}"#),
            t("to the group"),
            bin.clone(),
            t("&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;"),
            t(r#"{"via":"api"}"#),
            t("api both"),
            t("end"),
        ]
    );
    assert_eq!(until_end(&mut clients[1]), want_b);
    assert_eq!(
        until_end(&mut clients[2]),
        [t("to all"), bin, t("bye"), M::Close(1000)]
    );
}

/// Runs `run.php tokens SECRET UID` and returns its lines as (name, token).
fn php_tokens(pkg: &Path, secret: &str, uid: &str) -> Vec<(String, String)> {
    let out = run_with_limit(
        Command::new("php")
            .arg(pkg.join("tests/run.php"))
            .args(["tokens", secret, uid])
            .env("HERALD_AUTOLOAD", pkg.join("vendor/autoload.php")),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "run.php tokens failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

/// Logs in on `srv` with `token` as the first message; returns the close code if refused.
fn login_by_message(srv: &Server, token: &str, uid: &str) -> Result<(), u16> {
    let mut c = srv.ws_connect();
    c.send_text(token);
    match next(&mut c) {
        M::T(s) if s == format!("login success, your uid is {uid}") => Ok(()),
        M::Close(code) => Err(code),
        other => panic!("unexpected answer to a token login: {other:?}"),
    }
}

/// Opens `ws://…/?token=TOKEN`: the handshake's HTTP status (101 when accepted), and then the
/// login reply.
fn login_by_url(srv: &Server, token: &str, uid: &str) -> u16 {
    let stream = TcpStream::connect(("127.0.0.1", srv.ws)).expect("connect ws");
    stream.set_read_timeout(Some(REPLY)).ok();
    let url = format!("ws://127.0.0.1:{}/?token={}", srv.ws, urlencode(token));
    match tungstenite::client(url, stream) {
        Ok((ws, resp)) => {
            let mut c = Ws { ws };
            assert_eq!(
                c.recv_text(REPLY),
                format!("login success, your uid is {uid}")
            );
            resp.status().as_u16()
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            resp.status().as_u16()
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Percent-encodes everything but unreserved characters.
fn urlencode(s: &str) -> String {
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

#[test]
fn package_tokens_log_in_on_hmac_and_jwt_servers() {
    if !have_php_and_composer() {
        return;
    }
    let dir = TempDir::new();
    let pkg = composer_copy(&dir.path);
    let secret = "0123456789abcdef-token-secret";
    // A uid with dots and non-ASCII: the hmac token is split from the right.
    let uid = "user.42.é";
    let tokens = php_tokens(&pkg, secret, uid);
    let get = |name: &str| -> String {
        tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} token in {tokens:?}"))
    };
    assert!(
        tokens
            .iter()
            .any(|(n, v)| n == "empty" && v.contains("InvalidArgumentException")),
        "{tokens:?}"
    );
    for (mode, good, refused) in [
        ("hmac", "hmac", &["hmac-expired", "hmac-other-secret"][..]),
        ("jwt", "jwt", &["jwt-expired", "jwt-not-yet"][..]),
    ] {
        let srv = Server::builder()
            .login_reply()
            .set(&format!("auth={mode}"))
            .set(&format!("auth_secret={secret}"))
            .start();
        let token = get(good);
        assert_eq!(login_by_message(&srv, &token, uid), Ok(()), "{mode}");
        assert_eq!(login_by_url(&srv, &token, uid), 101, "{mode}");
        for name in refused {
            let bad = get(name);
            assert_eq!(login_by_message(&srv, &bad, uid), Err(4001), "{name}");
            assert_eq!(login_by_url(&srv, &bad, uid), 401, "{name}");
        }
        // The other mode's token is refused too.
        let other = get(if mode == "hmac" { "jwt" } else { "hmac" });
        assert_eq!(login_by_message(&srv, &other, uid), Err(4001), "{mode}");
    }
}

#[test]
fn http_publisher_sends_again_on_a_new_connection_after_an_idle_close() {
    if !have_php_and_composer() {
        return;
    }
    let srv = Server::builder().set("idle_timeout=1").start();
    let dir = TempDir::new();
    let pkg = composer_copy(&dir.path);
    let out = run_with_limit(
        Command::new("php")
            .arg(pkg.join("tests/run.php"))
            .arg("idle")
            .env("HERALD_HTTP_PORT", srv.http.to_string())
            .env("HERALD_AUTOLOAD", pkg.join("vendor/autoload.php")),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "run.php idle failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "online before: {\"online\":false,\"connections\":0}\n\
         probe closed by the server: true\n\
         online after the server closed: {\"online\":false,\"connections\":0}\n\
         done\n"
    );
}
