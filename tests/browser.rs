//! The browser client (clients/js) in a real browser: headless Chromium loads a test page
//! from a small HTTP server run by the test, the page imports `herald.mjs` and also loads the
//! plain-script build `herald.js`, logs in on the real server, and reports every callback back
//! to the test with a `fetch` POST. The test pushes over the text port and reads the reports:
//! pushes arrive; a `kill -9` of the worker holding the page's connection makes the page
//! reconnect (with back-off) and receive a later push; a kick ends it for good; `close()` is a
//! clean close. `herald.js` must be what `node clients/js/build.mjs` makes of `herald.mjs`.
//!
//! Needs `chromium` (Debian `chromium`) and, for the build check, `node` (Debian `nodejs`):
//! missing, the tests fail under CI=true and otherwise skip with a note.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a browser event may take (Chromium's start-up included).
const EVENT: Duration = Duration::from_secs(20);

/// The page: both builds, a client per build, every callback reported to `/report`.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>herald browser test</title>
<script src="/herald.js"></script>
<script type="module">
import Herald from '/herald.mjs';
const q = new URLSearchParams(location.search);
let seq = 0;
const report = (ev, extra) => fetch('/report', {
  method: 'POST',
  body: JSON.stringify(Object.assign({ ev, n: seq++ }, extra || {})),
});
const show = (d) => (typeof d === 'string' ? d : 'binary:' + new Uint8Array(d).join(','));
report('loaded', {
  iife: typeof window.Herald,
  same: window.Herald !== Herald && window.Herald.toString() === Herald.toString(),
});
const h = new Herald({
  url: q.get('ws'),
  uid: q.get('uid'),
  minDelay: 200,
  maxDelay: 1000,
  stableAfter: 500,
  onopen: (i) => report('open', i),
  onclose: (i) => report('close', i),
  onreconnect: (i) => report('reconnect', i),
  onerror: (e) => report('error', { message: String(e) }),
  onmessage: (d) => report('message', { data: show(d) }),
  recover: (i) => report('recover', { age: Date.now() - i.lastMessageAt }),
});
h.connect();
const g = new window.Herald({
  url: q.get('ws'),
  uid: q.get('uid') + '-iife',
  onclose: (i) => report('iife-close', i),
  onmessage: (d) => {
    report('iife-message', { data: show(d) });
    if (d === 'close-now') g.close();
  },
});
g.connect();
</script>
"#;

/// The third page: a client with `history: true` that reconnects after a kick, reporting its
/// messages, recoveries and positions.
const HISTORY_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>herald history test</title>
<script type="module">
import Herald from '/herald.mjs';
const q = new URLSearchParams(location.search);
let seq = 0;
const report = (ev, extra) => fetch('/report', {
  method: 'POST',
  body: JSON.stringify(Object.assign({ ev, n: seq++ }, extra || {})),
});
const h = new Herald({
  url: q.get('ws'),
  uid: q.get('uid'),
  history: true,
  reconnectOnKick: true,
  minDelay: 1500,
  maxDelay: 2000,
  jitter: 0,
  onopen: (i) => report('open', i),
  onclose: (i) => report('close', i),
  onmessage: (d) => report('message', { data: d, position: h.position }),
  onrecovery: (i) => report('recovery', i),
  recover: (i) => report('recover', i),
  onerror: (e) => report('error', { message: String(e) }),
});
h.connect();
</script>
"#;

/// The second page: two clients logging in with tokens fetched for every connection (one on
/// the URL, one as the first message), dropping a connection that stays silent, and skipping
/// the backend's heartbeats.
const TOKEN_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>herald browser test: tokens and silence</title>
<script type="module">
import Herald from '/herald.mjs';
const q = new URLSearchParams(location.search);
let seq = 0;
const report = (ev, extra) => fetch('/report', {
  method: 'POST',
  body: JSON.stringify(Object.assign({ ev, n: seq++ }, extra || {})),
});
for (const tokenIn of ['query', 'message']) {
  const uid = 'tk-' + tokenIn;
  const p = tokenIn + '-';
  new Herald({
    url: q.get('ws'),
    token: () => {
      report(p + 'token');
      return fetch('/token?uid=' + uid).then((r) => r.text());
    },
    tokenIn,
    minDelay: 200,
    maxDelay: 1000,
    stableAfter: 500,
    connectTimeout: 1500,
    silenceTimeout: 3000,
    isHeartbeat: (d) => d === 'hb',
    heartbeatInterval: tokenIn === 'message' ? 250 : 0,
    onopen: (i) => report(p + 'open', i),
    onclose: (i) => report(p + 'close', i),
    onreconnect: (i) => report(p + 'reconnect', i),
    onerror: (e) => report('error', { message: String(e) }),
    onmessage: (d) => report(p + 'message', { data: d }),
  }).connect();
}
</script>
"#;

/// A tiny HTTP/1.1 server for the page and the scripts, collecting the page's reports.
struct PageServer {
    /// Its port on 127.0.0.1.
    port: u16,
    /// Tells the accept loop to end.
    stop: Arc<AtomicBool>,
    /// The accept loop.
    thread: Option<JoinHandle<()>>,
}

impl PageServer {
    /// Serves on a free port; `/token` answers `hmac` tokens under `secret`.
    fn start(reports: Sender<Value>, secret: &str) -> PageServer {
        let secret = secret.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind page server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let tx = reports.clone();
                        let secret = secret.clone();
                        std::thread::spawn(move || serve(s, &tx, &secret));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        PageServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request (`Connection: close`).
fn serve(mut s: TcpStream, reports: &Sender<Value>, secret: &str) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[head_end..head_end + length];
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let js = workspace_root().join("clients/js");
    let (status, kind, content): (&str, &str, Vec<u8>) = match (method, path) {
        ("GET", "/page.html") => ("200 OK", "text/html", PAGE.as_bytes().to_vec()),
        ("GET", "/tokens.html") => ("200 OK", "text/html", TOKEN_PAGE.as_bytes().to_vec()),
        ("GET", "/history.html") => ("200 OK", "text/html", HISTORY_PAGE.as_bytes().to_vec()),
        ("GET", "/token") => {
            let uid = target.split_once("?uid=").map(|(_, u)| u).unwrap_or("");
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                + 60;
            let token = hmac_token(secret, uid, exp);
            ("200 OK", "text/plain", token.into_bytes())
        }
        ("GET", "/herald.mjs") | ("GET", "/herald.js") => (
            "200 OK",
            "text/javascript",
            std::fs::read(js.join(&path[1..])).unwrap_or_default(),
        ),
        ("POST", "/report") => {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                let _ = reports.send(v);
            }
            ("204 No Content", "text/plain", Vec::new())
        }
        _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        content.len()
    )
    .into_bytes();
    out.extend_from_slice(&content);
    let _ = s.write_all(&out);
}

/// The page's reports, in arrival order (each carries the page's own sequence number `n`).
struct Reports {
    /// Where the page server sends them.
    rx: Receiver<Value>,
    /// Every report so far.
    seen: Vec<Value>,
}

impl Reports {
    /// The first report (in the page's order) matching `pred`, waiting up to `limit`.
    fn wait(&mut self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let mut hits: Vec<&Value> = self.seen.iter().filter(|v| pred(v)).collect();
            hits.sort_by_key(|v| v["n"].as_u64());
            if let Some(v) = hits.first() {
                return (*v).clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(v) => self.seen.push(v),
                Err(_) => panic!(
                    "the page never reported {what} within {limit:?}; it reported:\n{}",
                    self.seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Every report that arrives within `window`, added to `seen`.
    fn drain_for(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(_) => break,
            }
        }
    }
}

/// A message report with this text.
fn message<'a>(ev: &'static str, text: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |v: &Value| v["ev"] == ev && v["data"] == text
}

/// Headless Chromium on `url`, in its own process group (killed with it on drop) and with a
/// fresh profile in `profile`.
fn chromium(url: &str, profile: &Path) -> Group {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Group::spawn(&mut cmd).expect("spawn chromium")
}

/// Sends one text-port line on a fresh connection and returns the reply line.
fn text(srv: &Server, line: &str) -> String {
    String::from_utf8_lossy(&srv.text_push(format!("{line}\n").as_bytes())).into_owned()
}

#[test]
fn browser_client_receives_reconnects_after_a_worker_dies_and_closes() {
    if !require("chromium (apt install chromium)", have_program("chromium")) {
        return;
    }
    let srv = Server::builder().workers(1).login_reply().start();
    let (tx, rx) = channel();
    let pages = PageServer::start(tx, "");
    let mut reports = Reports {
        rx,
        seen: Vec::new(),
    };
    let profile = TempDir::new();
    let url = format!(
        "http://127.0.0.1:{}/page.html?uid=pg&ws=ws://127.0.0.1:{}/",
        pages.port, srv.ws
    );
    let browser = chromium(&url, &profile.path);

    // Both builds loaded, and they are the same code.
    let loaded = reports.wait("loaded", EVENT, |v| v["ev"] == "loaded");
    assert_eq!(loaded["iife"], "function", "{loaded}");
    assert_eq!(
        loaded["same"], true,
        "herald.js is not herald.mjs: {loaded}"
    );

    // Logged in (the server's login reply is the first message), then pushes arrive.
    reports.wait(
        "login",
        EVENT,
        message("message", "login success, your uid is pg"),
    );
    reports.wait(
        "the script build's login",
        EVENT,
        message("iife-message", "login success, your uid is pg-iife"),
    );
    assert_eq!(
        text(&srv, r#"{"cmd":"push","to":"pg","data":"first"}"#),
        "ok\n"
    );
    reports.wait("first push", REPLY, message("message", "first"));
    assert_eq!(
        text(
            &srv,
            r#"{"cmd":"push","to":"pg","data":"AAEC/w==","binary":true}"#
        ),
        "ok\n"
    );
    reports.wait("binary push", REPLY, message("message", "binary:0,1,2,255"));
    assert_eq!(
        text(&srv, r#"{"cmd":"push","to":"pg-iife","data":{"k":1}}"#),
        "ok\n"
    );
    reports.wait(
        "push to the script build",
        REPLY,
        message("iife-message", r#"{"k":1}"#),
    );

    // A forced drop: the worker holding the connection is killed. The master starts another;
    // the page sees an abnormal close, schedules a reconnect, and logs in again.
    let workers = srv.worker_pids();
    assert_eq!(workers.len(), 1, "one worker");
    for pid in &workers {
        signal(*pid, libc::SIGKILL);
    }
    let closed = reports.wait("the drop", EVENT, |v| v["ev"] == "close");
    assert_eq!(closed["willReconnect"], true, "{closed}");
    assert_ne!(closed["code"], 1000, "{closed}");
    let retry = reports.wait("a scheduled reconnect", EVENT, |v| v["ev"] == "reconnect");
    let delay = retry["delay"].as_u64().unwrap_or(0);
    assert!(
        (100..=200).contains(&delay),
        "first delay within minDelay's jitter: {retry}"
    );
    reports.wait("the reconnection", EVENT, |v| {
        v["ev"] == "open" && v["reconnected"] == true
    });
    // The recovery hook runs after the new connection opened, knowing when the last message
    // came (before the drop).
    let recover = reports.wait("the recovery hook", REPLY, |v| v["ev"] == "recover");
    assert!(
        recover["age"].as_u64().is_some_and(|a| a < 60_000),
        "{recover}"
    );
    // Sent until one is delivered: the new worker registers the login asynchronously.
    srv.push_until_ok(
        b"{\"cmd\":\"push\",\"to\":\"pg\",\"data\":\"after the drop\"}\n",
        EVENT,
    );
    reports.wait(
        "the push after the drop",
        REPLY,
        message("message", "after the drop"),
    );

    // A kick ends the connection for good: its message, a close 1000 `kicked`, no reconnect.
    assert_eq!(
        text(&srv, r#"{"cmd":"kick","uid":"pg","data":"bye"}"#),
        "ok\n"
    );
    reports.wait("the kick's message", REPLY, message("message", "bye"));
    let kicked = reports.wait("the kick", REPLY, |v| {
        v["ev"] == "close" && v["code"] == 1000
    });
    assert_eq!(kicked["reason"], "kicked", "{kicked}");
    assert_eq!(kicked["willReconnect"], false, "{kicked}");
    // Longer than maxDelay: a reconnect would have been scheduled and opened by then.
    reports.drain_for(Duration::from_millis(1500));
    let after: Vec<&Value> = reports
        .seen
        .iter()
        .filter(|v| v["ev"] == "open" && v["n"].as_u64() > kicked["n"].as_u64())
        .collect();
    assert!(after.is_empty(), "reconnected after a kick: {after:?}");
    assert_eq!(text(&srv, r#"{"cmd":"online","uid":"pg"}"#), "0\n");

    // close(): a clean close (the server's echo), no reconnect, the uid gone.
    // (The script build's client was dropped by the kill too, and has reconnected by itself.)
    srv.push_until_ok(
        b"{\"cmd\":\"push\",\"to\":\"pg-iife\",\"data\":\"close-now\"}\n",
        EVENT,
    );
    let closed = reports.wait("the clean close", REPLY, |v| {
        v["ev"] == "iife-close" && v["willReconnect"] == false
    });
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["wasClean"], true, "{closed}");
    assert_eq!(closed["willReconnect"], false, "{closed}");
    assert!(
        wait_until(REPLY, || text(&srv, r#"{"cmd":"online","uid":"pg-iife"}"#)
            == "0\n"),
        "pg-iife still online after close()"
    );
    let errors: Vec<&Value> = reports.seen.iter().filter(|v| v["ev"] == "error").collect();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
    drop(browser);
    drop(pages);
}

#[test]
fn script_build_is_generated_from_the_module() {
    if !require("node (apt install nodejs)", have_program("node")) {
        return;
    }
    let out = run_with_limit(
        Command::new("node")
            .arg(script("clients/js/build.mjs"))
            .arg("--check"),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "clients/js/herald.js is stale: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pushes `{"cmd":"all","data":"hb"}` every 300 ms until dropped: a backend's heartbeat.
struct Heartbeat {
    /// Tells the thread to end.
    stop: Arc<AtomicBool>,
    /// The thread.
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(port: u16) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
                    c.set_read_timeout(Some(Duration::from_secs(1))).ok();
                    let _ = c.write_all(b"{\"cmd\":\"all\",\"data\":\"hb\"}\n");
                    let _ = c.read(&mut [0u8; 16]);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Resumes a stopped process when dropped (also when the test fails while it is stopped).
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn browser_client_with_tokens_drops_a_silent_connection_and_comes_back() {
    if !require("chromium (apt install chromium)", have_program("chromium")) {
        return;
    }
    let secret = "0123456789abcdef-browser";
    let srv = Server::builder()
        .workers(1)
        .login_reply()
        .set("auth=hmac")
        .set(&format!("auth_secret={secret}"))
        .start();
    let (tx, rx) = channel();
    let pages = PageServer::start(tx, secret);
    let mut reports = Reports {
        rx,
        seen: Vec::new(),
    };
    let heartbeat = Heartbeat::start(srv.text);
    let profile = TempDir::new();
    let url = format!(
        "http://127.0.0.1:{}/tokens.html?ws=ws://127.0.0.1:{}/",
        pages.port, srv.ws
    );
    let browser = chromium(&url, &profile.path);

    for p in ["query", "message"] {
        let login = format!("login success, your uid is tk-{p}");
        reports.wait("a token login", EVENT, |v| {
            v["ev"] == format!("{p}-message") && v["data"] == login.as_str()
        });
    }
    assert_eq!(
        text(&srv, r#"{"cmd":"push","to":"tk-query","data":"before"}"#),
        "ok\n"
    );
    reports.wait("a push", REPLY, message("query-message", "before"));
    // The backend's heartbeats keep the connections up for longer than silenceTimeout.
    reports.drain_for(Duration::from_millis(4000));
    let closes: Vec<&Value> = reports
        .seen
        .iter()
        .filter(|v| v["ev"].as_str().is_some_and(|e| e.ends_with("-close")))
        .collect();
    assert!(closes.is_empty(), "closed despite heartbeats: {closes:?}");

    // The server falls silent (its only worker stopped, the heartbeats ended): each client
    // drops its connection after silenceTimeout, and its new connections stay unanswered
    // (the kernel accepts them, the stopped worker never answers) until connectTimeout.
    drop(heartbeat);
    let workers = srv.worker_pids();
    assert_eq!(workers.len(), 1, "one worker");
    let worker = *workers.iter().next().expect("a worker");
    signal(worker, libc::SIGSTOP);
    let stopped = Stopped(worker);
    for p in ["query", "message"] {
        let silent = reports.wait("a drop for silence", EVENT, |v| {
            v["ev"] == format!("{p}-close") && v["reason"] == "silence"
        });
        assert_eq!(silent["willReconnect"], true, "{silent}");
        reports.wait("a connect timeout", EVENT, |v| {
            v["ev"] == format!("{p}-close") && v["reason"] == "connect timeout"
        });
    }
    drop(stopped);
    for p in ["query", "message"] {
        reports.wait("the reconnection", EVENT, |v| {
            v["ev"] == format!("{p}-open") && v["reconnected"] == true
        });
        let line = format!("{{\"cmd\":\"push\",\"to\":\"tk-{p}\",\"data\":\"after\"}}\n");
        srv.push_until_ok(line.as_bytes(), EVENT);
        reports.wait(
            "the push after",
            REPLY,
            message(
                if p == "query" {
                    "query-message"
                } else {
                    "message-message"
                },
                "after",
            ),
        );
        // A token per connection: the first, one per attempt while stopped, the last.
        let tokens = reports
            .seen
            .iter()
            .filter(|v| v["ev"] == format!("{p}-token"))
            .count();
        assert!(tokens >= 3, "{p}: {tokens} tokens fetched");
    }
    let leaked: Vec<&Value> = reports
        .seen
        .iter()
        .filter(|v| v["data"] == "hb" || v["ev"] == "error")
        .collect();
    assert!(
        leaked.is_empty(),
        "heartbeats or errors reached the page: {leaked:?}"
    );
    drop(browser);
    drop(pages);
}

/// With `history: true` the browser client learns its position, and after a drop it comes back
/// with `since`: what was pushed while it was away arrives (recovered), once, then live pushes.
#[test]
fn browser_client_recovers_what_it_missed_with_history() {
    if !require("chromium (apt install chromium)", have_program("chromium")) {
        return;
    }
    let srv = Server::builder()
        .workers(1)
        .login_reply()
        .set("history_size=50")
        .start();
    let (tx, rx) = channel();
    let pages = PageServer::start(tx, "");
    let mut reports = Reports {
        rx,
        seen: Vec::new(),
    };
    let profile = TempDir::new();
    let url = format!(
        "http://127.0.0.1:{}/history.html?uid=hp&ws=ws://127.0.0.1:{}/",
        pages.port, srv.ws
    );
    let browser = chromium(&url, &profile.path);
    reports.wait(
        "login",
        EVENT,
        message("message", "login success, your uid is hp"),
    );
    assert_eq!(
        text(&srv, r#"{"cmd":"push","to":"hp","data":"one"}"#),
        "ok\n"
    );
    let one = reports.wait("the first push", REPLY, message("message", "one"));
    assert!(one["position"]["offset"].as_u64().is_some(), "{one}");
    // A kick drops the connection; the page comes back after 1.5 s. Meanwhile: two pushes.
    assert_eq!(text(&srv, r#"{"cmd":"kick","uid":"hp"}"#), "ok\n");
    reports.wait("the drop", REPLY, |v| {
        v["ev"] == "close" && v["willReconnect"] == true
    });
    for m in ["two", "three"] {
        let line = format!(r#"{{"cmd":"push","to":"hp","data":"{m}"}}"#);
        assert_eq!(text(&srv, &line), "fail\n", "nobody there for {m}");
    }
    let rec = reports.wait("the recovery", EVENT, |v| v["ev"] == "recovery");
    assert_eq!(rec["recovered"], true, "{rec}");
    reports.wait("the first missed", REPLY, message("message", "two"));
    reports.wait("the second missed", REPLY, message("message", "three"));
    srv.push_until_ok(
        b"{\"cmd\":\"push\",\"to\":\"hp\",\"data\":\"four\"}\n",
        EVENT,
    );
    reports.wait("a live push", REPLY, message("message", "four"));
    reports.drain_for(Duration::from_millis(300));
    // In the page's order (its reports are separate requests, which may arrive out of order).
    let mut messages: Vec<&Value> = reports
        .seen
        .iter()
        .filter(|v| v["ev"] == "message")
        .collect();
    messages.sort_by_key(|v| v["n"].as_u64());
    let got: Vec<&str> = messages
        .iter()
        .filter_map(|v| v["data"].as_str())
        .filter(|d| !d.starts_with("login success"))
        .collect();
    assert_eq!(got, ["one", "two", "three", "four"], "each once, in order");
    let asked: Vec<&Value> = reports
        .seen
        .iter()
        .filter(|v| v["ev"] == "recover")
        .collect();
    assert!(
        asked.is_empty(),
        "recover called though the gap was filled: {asked:?}"
    );
    let errors: Vec<&Value> = reports.seen.iter().filter(|v| v["ev"] == "error").collect();
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
    drop(browser);
    drop(pages);
}
