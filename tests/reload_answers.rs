//! Reloads lose no answer and refuse no connection, end to end.
//!
//! * A retiring worker (plain `reload`: stop; `reload -g`: drain) reads no more from its
//!   backend connections, answers every line it already read (also those waiting for its
//!   siblings), then closes them after the last answer. Backends pipelining pushes through
//!   four reloads count their replies: every line gets exactly one, and a line left without a
//!   reply when the server closed was never processed: the backend sends it again on a new
//!   connection. WebSocket clients, reconnecting whenever their worker retires, record when
//!   each push arrives: a resent line that arrived *before* it was resent was processed on a
//!   connection that closed without its reply, a reply lost.
//! * Connections opened in a loop during three plain reloads are neither refused nor reset,
//!   and each gets its reply.
//! * Neither logs a `Broken pipe` warning: a sibling link closing during a reload is expected.
//!
//! Synchronisation is on replies, frames and processes (`/proc`), never on sleeps alone.

mod common;

use common::*;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Workers of the servers under test.
const WORKERS: usize = 2;
/// WebSocket clients (uids `w0`…), spread by the kernel over the workers.
const UIDS: u64 = 6;
/// Lines a backend keeps in flight.
const WINDOW: usize = 200;
/// Backend connections pushing at once: text ones, and the last on the HTTP port.
const BACKENDS: u64 = 3;

/// What one pipelining backend saw.
#[derive(Default)]
struct BackendReport {
    /// Lines written, resends included.
    written: u64,
    /// Distinct lines (sequence numbers) made.
    made: u64,
    /// seq -> its reply (`ok` / `fail`).
    replies: HashMap<u64, bool>,
    /// Connections the server closed (after their last reply).
    closes: u64,
    /// Connections reset.
    resets: u64,
    /// Lines without a reply when their connection closed (resent on the next one).
    resent: u64,
    /// seq -> when it was last sent again.
    resent_at: HashMap<u64, Instant>,
    /// Anything that must not happen: a second reply, a reply to no line, a stall, a refused
    /// connect.
    errors: Vec<String>,
}

fn line(seq: u64) -> String {
    format!("{{\"uid\":\"w{}\",\"s\":{seq}}}\n", seq % UIDS)
}

/// What differs between a text-port backend and an HTTP one; [`backend`] does the rest.
struct Wire {
    /// Requests kept in flight.
    window: usize,
    /// What a request is called in error messages (`lines`, `requests`).
    what: &'static str,
    /// The request for sequence number `seq`.
    request: fn(u64) -> String,
    /// Takes every whole answer from `buf` for the front of `inflight`, recording it; returns
    /// true when an answer said the connection ends after it.
    answers: fn(&mut Vec<u8>, &mut VecDeque<u64>, &mut BackendReport) -> bool,
}

/// The text port: one line in, one `ok`/`fail` line out.
const TEXT: Wire = Wire {
    window: WINDOW,
    what: "lines",
    request: line,
    answers: |buf, inflight, r| {
        while let Some(i) = buf.iter().position(|c| *c == b'\n') {
            let reply: Vec<u8> = buf.drain(..=i).collect();
            let Some(seq) = inflight.pop_front() else {
                r.errors.push(format!("reply {} to no line", show(&reply)));
                continue;
            };
            let ok = match reply.as_slice() {
                b"ok\n" => true,
                b"fail\n" => false,
                other => {
                    r.errors.push(format!("line {seq}: reply {}", show(other)));
                    false
                }
            };
            if r.replies.insert(seq, ok).is_some() {
                r.errors.push(format!("line {seq}: a second reply"));
            }
        }
        false
    },
};

/// The JSON API: `POST /api/push` on keep-alive connections, `{"delivered":N}` back; a
/// response saying `Connection: close` is the connection's last.
const HTTP: Wire = Wire {
    window: 16,
    what: "requests",
    request: |seq| {
        let body = format!(
            "{{\"to\":\"w{}\",\"data\":\"{{\\\"s\\\":{seq}}}\"}}",
            seq % UIDS
        );
        format!(
            "POST /api/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    },
    answers: |buf, inflight, r| {
        while let Some(head_end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < head_end + 4 + len {
                break;
            }
            let body: Vec<u8> = buf[head_end + 4..head_end + 4 + len].to_vec();
            buf.drain(..head_end + 4 + len);
            let Some(seq) = inflight.pop_front() else {
                r.errors
                    .push(format!("response {} to no request", show(&body)));
                continue;
            };
            let delivered = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("delivered")?.as_u64());
            match delivered {
                Some(n) if head.starts_with("http/1.1 200 ") => {
                    if r.replies.insert(seq, n > 0).is_some() {
                        r.errors.push(format!("request {seq}: a second response"));
                    }
                }
                _ => r.errors.push(format!(
                    "request {seq}: response {} {}",
                    head.lines().next().unwrap_or(""),
                    show(&body)
                )),
            }
            if head.contains("\r\nconnection: close") {
                return true;
            }
        }
        false
    },
};

/// Pipelines requests (`wire`) on one connection after another until `stop`, keeping
/// `wire.window` in flight; a connection the server closes (or ends with its last answer) is
/// replaced, and the requests it left without an answer are sent again first.
fn backend(
    port: u16,
    b: u64,
    wire: &Wire,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<BackendReport>>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 0u64;
    let mut again: VecDeque<u64> = VecDeque::new();
    while !(stop.load(Ordering::SeqCst) && again.is_empty()) && Instant::now() < deadline {
        let mut s = match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => s,
            Err(e) => {
                report.lock().unwrap().errors.push(format!("connect: {e}"));
                return;
            }
        };
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.set_write_timeout(Some(Duration::from_secs(10))).ok();
        let mut inflight: VecDeque<u64> = VecDeque::new();
        let mut buf: Vec<u8> = Vec::new();
        let (mut can_write, mut last) = (true, false);
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if can_write && !last && inflight.len() <= wire.window / 2 {
                let mut batch = String::new();
                let mut resending = Vec::new();
                let mut made = 0;
                while inflight.len() < wire.window {
                    let seq = match again.pop_front() {
                        Some(seq) => {
                            resending.push(seq);
                            seq
                        }
                        None if !stopping => {
                            next += 1;
                            b * 1_000_000_000 + next
                        }
                        None => break,
                    };
                    batch.push_str(&(wire.request)(seq));
                    inflight.push_back(seq);
                    made += 1;
                }
                if made > 0 {
                    let mut r = report.lock().unwrap();
                    r.written += made;
                    r.made = next;
                    let now = Instant::now();
                    for seq in resending {
                        r.resent_at.insert(seq, now);
                    }
                    drop(r);
                    // A write refused by a closed connection: the answers already sent are
                    // still read below, then the connection ends.
                    if s.write_all(batch.as_bytes()).is_err() {
                        can_write = false;
                    }
                }
            }
            if inflight.is_empty() || last {
                break;
            }
            let mut chunk = [0u8; 16384];
            match s.read(&mut chunk) {
                Ok(0) => {
                    report.lock().unwrap().closes += 1;
                    break;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut r = report.lock().unwrap();
                    last = (wire.answers)(&mut buf, &mut inflight, &mut r);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    report.lock().unwrap().errors.push(format!(
                        "no answer within 10 s with {} {} in flight",
                        inflight.len(),
                        wire.what
                    ));
                    return;
                }
                Err(_) => {
                    report.lock().unwrap().resets += 1;
                    break;
                }
            }
        }
        if last {
            report.lock().unwrap().closes += 1;
        }
        if !inflight.is_empty() {
            report.lock().unwrap().resent += inflight.len() as u64;
            // Resent first, in their order.
            for seq in inflight.into_iter().rev() {
                again.push_front(seq);
            }
        }
    }
}

/// What the WebSocket clients received: seq -> when each copy arrived.
type Deliveries = Arc<Mutex<HashMap<u64, Vec<Instant>>>>;

/// Keeps uid `w{i}` logged in, reconnecting whenever the server closes it, and records every
/// push; `mark` is set when a push with `"mark":1` arrives.
fn client(port: u16, i: u64, stop: Arc<AtomicBool>, got: Deliveries, mark: Arc<AtomicBool>) {
    let uid = format!("w{i}");
    while !stop.load(Ordering::SeqCst) {
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok();
        stream.set_write_timeout(Some(REPLY)).ok();
        let Ok((mut ws, _)) = tungstenite::client(format!("ws://127.0.0.1:{port}/"), stream) else {
            continue;
        };
        if ws.send(tungstenite::Message::text(uid.clone())).is_err() {
            continue;
        }
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                        continue; // the login reply
                    };
                    if v.get("mark").is_some() {
                        mark.store(true, Ordering::SeqCst);
                    } else if let Some(seq) = v.get("s").and_then(|s| s.as_u64()) {
                        got.lock()
                            .unwrap()
                            .entry(seq)
                            .or_default()
                            .push(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

/// Replies received by every backend so far.
fn replies(reports: &[Arc<Mutex<BackendReport>>]) -> usize {
    reports
        .iter()
        .map(|r| r.lock().unwrap().replies.len())
        .sum()
}

/// Runs `herald ARGS` and waits until every worker was replaced (the old processes exited).
fn reload(srv: &mut Server, args: &[&str]) {
    let old = srv.worker_pids();
    let out = srv.cli(args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "herald {}: {}",
        args.join(" "),
        show(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            let now = srv.worker_pids();
            now.len() == WORKERS && now.is_disjoint(&old)
        }),
        "herald {}: workers not replaced: before {old:?}, now {:?}\n{}",
        args.join(" "),
        srv.worker_pids(),
        srv.log()
    );
}

/// Asserts that the server logged no `Broken pipe` warning.
fn assert_no_broken_pipe_warnings(srv: &Server) {
    let log = srv.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("Broken pipe"))
        .collect();
    assert!(
        warned.is_empty(),
        "{} `Broken pipe` warnings, first: {:?}",
        warned.len(),
        &warned[..warned.len().min(5)]
    );
}

#[test]
fn pipelined_backends_lose_no_reply_across_plain_and_graceful_reloads() {
    let mut srv = Server::builder()
        .workers(WORKERS)
        .login_reply()
        .set("drain_timeout=1.5")
        .start();
    srv.wait_mesh();
    let stop_clients = Arc::new(AtomicBool::new(false));
    let got: Deliveries = Arc::default();
    let marks: Vec<Arc<AtomicBool>> = (0..UIDS).map(|_| Arc::default()).collect();
    let clients: Vec<_> = (0..UIDS)
        .map(|i| {
            let (stop, got, mark, port) = (
                stop_clients.clone(),
                got.clone(),
                marks[i as usize].clone(),
                srv.ws,
            );
            std::thread::spawn(move || client(port, i, stop, got, mark))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reports: Vec<Arc<Mutex<BackendReport>>> = (0..BACKENDS).map(|_| Arc::default()).collect();
    // Text backends first, then one on the HTTP port (the JSON API).
    let backends: Vec<_> = (0..BACKENDS)
        .map(|b| {
            let (stop, report) = (stop.clone(), reports[b as usize].clone());
            let (text, http) = (srv.text, srv.http);
            std::thread::spawn(move || {
                if b < BACKENDS - 1 {
                    backend(text, b, &TEXT, stop, report)
                } else {
                    backend(http, b, &HTTP, stop, report)
                }
            })
        })
        .collect();
    let flowing = |n: usize| wait_until(Duration::from_secs(20), || replies(&reports) >= n);
    assert!(flowing(2_000), "no traffic before the reloads");
    for args in [
        &["reload"][..],
        &["reload", "-g"],
        &["reload"],
        &["reload", "-g"],
    ] {
        reload(&mut srv, args);
        let seen = replies(&reports);
        assert!(
            flowing(seen + 2_000),
            "traffic did not resume after herald {}\n{}",
            args.join(" "),
            srv.log()
        );
    }
    stop.store(true, Ordering::SeqCst);
    for b in backends {
        b.join().expect("backend thread");
    }
    // Every push made so far has reached the clients once a marker pushed after them has.
    for (i, mark) in marks.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !mark.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "w{i} never got its marker");
            let reply = srv.text_push(format!("{{\"uid\":\"w{i}\",\"mark\":1}}\n").as_bytes());
            if reply != b"ok\n" {
                std::thread::sleep(Duration::from_millis(20));
            }
            wait_until(Duration::from_millis(500), || mark.load(Ordering::SeqCst));
        }
    }
    stop_clients.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }

    let got = got.lock().unwrap();
    let (mut made, mut written, mut answered, mut oks, mut closes, mut resets, mut resent) =
        (0, 0, 0, 0, 0, 0, 0);
    let mut errors = Vec::new();
    let mut unanswered = Vec::new();
    let mut fail_but_delivered = 0;
    for (b, r) in reports.iter().enumerate() {
        let r = r.lock().unwrap();
        eprintln!(
            "backend {b} ({}): {} made, {} written, {} answered, {} closes, {} resets",
            if b as u64 == BACKENDS - 1 {
                "http"
            } else {
                "text"
            },
            r.made,
            r.written,
            r.replies.len(),
            r.closes,
            r.resets
        );
        made += r.made;
        written += r.written;
        answered += r.replies.len() as u64;
        oks += r.replies.values().filter(|ok| **ok).count();
        closes += r.closes;
        resets += r.resets;
        resent += r.resent;
        errors.extend(r.errors.iter().map(|e| format!("backend {b}: {e}")));
        for n in 1..=r.made {
            let seq = b as u64 * 1_000_000_000 + n;
            match r.replies.get(&seq) {
                None => unanswered.push(seq),
                Some(false) if got.contains_key(&seq) => fail_but_delivered += 1,
                Some(_) => {}
            }
        }
    }
    // A resent line that reached a client before it was resent was processed on the
    // connection that closed without its reply.
    let mut lost: Vec<u64> = Vec::new();
    for r in &reports {
        let r = r.lock().unwrap();
        for (seq, at) in &r.resent_at {
            if got
                .get(seq)
                .is_some_and(|times| times.iter().any(|t| t < at))
            {
                lost.push(*seq);
            }
        }
    }
    lost.sort_unstable();
    let twice = got.values().filter(|t| t.len() > 1).count();
    eprintln!(
        "{made} lines made, {written} written ({resent} resent after a close), {answered} \
         replies ({oks} ok), {} delivered; {fail_but_delivered} answered fail but delivered, \
         {twice} delivered twice (a uid moving to another worker while the push went round); \
         {closes} connections closed by the server, {resets} reset",
        got.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        unanswered.is_empty(),
        "{} lines never answered: {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(5)]
    );
    assert_eq!(answered, made, "every line made gets exactly one reply");
    assert!(
        lost.is_empty(),
        "{} replies lost: lines delivered before they were resent, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(
        resets, 0,
        "connections reset instead of closed after their last reply"
    );
    assert_no_broken_pipe_warnings(&srv);
}

/// How the connections of the connect loop ended.
#[derive(Default, Debug)]
struct ConnectReport {
    attempts: usize,
    refused: Vec<String>,
    reset: Vec<String>,
    closed_without_reply: Vec<String>,
    wrong: Vec<String>,
}

/// New connections in a loop until `stop`, each sending one push for an offline uid and
/// reading its `fail`.
fn connect_loop(port: u16, stop: Arc<AtomicBool>, report: Arc<Mutex<ConnectReport>>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let when = format!("{:?}", Instant::now());
        let outcome = (|| {
            let mut s = match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => s,
                Err(e) => return Err((0, format!("connect: {e}"))),
            };
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            if let Err(e) = s.write_all(b"{\"uid\":\"reload-nobody\"}\n") {
                return Err((1, format!("write: {e}")));
            }
            let mut c = TextConn::from_stream(s);
            match c.read_until_line(Duration::from_secs(10)) {
                (got, _) if got == b"fail\n" => Ok(()),
                (got, Eof::Reset) => Err((1, format!("reset after {}", show(&got)))),
                (got, Eof::Fin) => Err((2, format!("closed after {}", show(&got)))),
                (got, Eof::Open) => Err((3, format!("reply {}", show(&got)))),
            }
        })();
        let mut r = report.lock().unwrap();
        r.attempts += 1;
        if let Err((kind, what)) = outcome {
            let what = format!("{what} (at {when})");
            match kind {
                0 => r.refused.push(what),
                1 => r.reset.push(what),
                2 => r.closed_without_reply.push(what),
                _ => r.wrong.push(what),
            }
        }
    }
}

#[test]
fn plain_reloads_refuse_or_reset_no_connection() {
    let mut srv = Server::builder().workers(WORKERS).start();
    srv.wait_mesh();
    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(ConnectReport::default()));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, report, port) = (stop.clone(), report.clone(), srv.text);
            std::thread::spawn(move || connect_loop(port, stop, report))
        })
        .collect();
    let attempts = || report.lock().unwrap().attempts;
    assert!(wait_until(Duration::from_secs(10), || attempts() >= 200));
    for _ in 0..3 {
        reload(&mut srv, &["reload"]);
        let seen = attempts();
        assert!(wait_until(Duration::from_secs(10), || attempts() >= seen + 200));
    }
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().expect("connect loop");
    }
    let r = report.lock().unwrap();
    eprintln!(
        "{} connections over 3 plain reloads: {} refused, {} reset, {} closed without a \
         reply, {} wrong replies",
        r.attempts,
        r.refused.len(),
        r.reset.len(),
        r.closed_without_reply.len(),
        r.wrong.len()
    );
    let failed = r.refused.len() + r.reset.len() + r.closed_without_reply.len() + r.wrong.len();
    assert_eq!(failed, 0, "{r:#?}");
    assert_no_broken_pipe_warnings(&srv);
}

/// Load balancer probes through reloads: `/healthz` answers 200 at every probe while the
/// workers are replaced (plain and graceful), `/readyz` answers 200 or 503 (a new worker still
/// reaching its siblings, an old one retiring), never a refused or broken connection, and 200
/// again once the reload is over.
#[test]
fn health_probes_answer_through_reloads() {
    let mut srv = Server::builder().workers(WORKERS).start();
    srv.wait_mesh();
    let http = srv.http;
    let stop = Arc::new(AtomicBool::new(false));
    let probing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen: HashMap<(&'static str, u16), usize> = HashMap::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for path in ["/healthz", "/readyz"] {
                    match try_http(http, &get(path)) {
                        Ok(r) => *seen.entry((path, r.status)).or_default() += 1,
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                }
            }
            (seen, failures)
        })
    };
    for args in [&["reload"][..], &["reload", "-g"]] {
        reload(&mut srv, args);
        assert!(
            wait_until(Duration::from_secs(10), || srv.http(&get("/readyz")).status
                == 200),
            "not ready after herald {}",
            args.join(" ")
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (seen, failures) = probing.join().expect("prober");
    eprintln!("probes during the reloads: {seen:?}");
    assert!(failures.is_empty(), "probes failed: {failures:?}");
    assert!(
        seen.get(&("/healthz", 200)).copied().unwrap_or(0) > 0,
        "{seen:?}"
    );
    for ((path, status), n) in &seen {
        match *path {
            "/healthz" => assert_eq!(*status, 200, "{n} probes of {path}: {seen:?}"),
            _ => assert!(matches!(status, 200 | 503), "{seen:?}"),
        }
    }
}

/// One request on a fresh connection (`Connection: close`): the status, or what went wrong.
fn try_http(port: u16, req: &[u8]) -> Result<HttpStatus, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REPLY)).ok();
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .map_err(|e| format!("read: {e} after {}", show(&all)))?;
    let status = String::from_utf8_lossy(&all)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no status in {}", show(&all)))?;
    Ok(HttpStatus { status })
}

/// The status line's code of an answer.
struct HttpStatus {
    /// The code.
    status: u16,
}
