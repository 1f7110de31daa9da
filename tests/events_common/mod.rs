//! Helpers of the events tests (`tests/events.rs`, `tests/events_workers.rs`): processes whose
//! stdout lines arrive on a channel (the PHP consumer, the Node Socket.IO chat client), a
//! subscriber on the text port in Rust, and the waits that make every worker know the
//! subscribers.
// Each test binary uses a different subset.
#![allow(dead_code)]

use crate::common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const LONG: Duration = Duration::from_secs(15);

/// A process whose stdout lines arrive on a channel; killed (with its group) on drop.
pub struct Lines {
    /// The process (killed with its group on drop).
    pub group: Group,
    /// Its stdout lines.
    pub rx: mpsc::Receiver<String>,
    /// For messages.
    pub name: String,
}

impl Lines {
    pub fn spawn(name: &str, cmd: &mut Command) -> Lines {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut group = Group::spawn(cmd).expect("spawn");
        let out = group.child.stdout.take().expect("stdout");
        Lines {
            group,
            rx: lines_of(out),
            name: name.into(),
        }
    }

    /// The next line satisfying `f`; panics at the deadline.
    pub fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&str) -> bool) -> String {
        wait_line(&self.rx, &self.name, what, limit, &mut f)
    }
}

pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    name: &str,
    what: &str,
    limit: Duration,
    f: &mut dyn FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if f(&l) => return l,
            Ok(_) => {}
            Err(_) => panic!("{name}: no {what} within {limit:?}"),
        }
    }
}

/// A subscriber on the text port, in Rust: its event lines on a channel.
pub struct Sub {
    /// The subscriber's connection.
    pub stream: TcpStream,
    /// Its lines.
    pub rx: mpsc::Receiver<String>,
}

impl Sub {
    pub fn connect(srv: &Server, events: &str) -> Sub {
        let mut stream = TcpStream::connect(("127.0.0.1", srv.text)).expect("connect");
        stream
            .write_all(format!("{{\"cmd\":\"subscribe\",\"events\":{events}}}\n").as_bytes())
            .expect("subscribe");
        let rx = lines_of(stream.try_clone().expect("clone"));
        let first = rx.recv_timeout(REPLY).expect("subscribe answer");
        assert_eq!(first, "ok", "subscribe");
        Sub { stream, rx }
    }

    /// The next event (a JSON line with `event`) satisfying `f`.
    pub fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut(&Value) -> bool) -> Value {
        let line = wait_line(&self.rx, "subscriber", what, limit, &mut |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| v.get("event").is_some() && f(&v))
        });
        serde_json::from_str(&line).expect("json")
    }

    /// Every event that arrives within `window`.
    pub fn drain(&self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(l) = self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v.get("event").is_some() {
                    out.push(v);
                }
            }
        }
        out
    }
}

/// Sum of a figure over the workers, from `GET /api/stats`.
pub fn stat(srv: &Server, key: &str) -> u64 {
    let r = srv.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    let v: Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v["workers"]
        .as_array()
        .map(|w| w.iter().filter_map(|r| r[key].as_u64()).sum())
        .unwrap_or(0)
}

/// Logs probe uids in until `subs` have each seen an `online` decided by every worker: then
/// every worker knows every subscriber (the owner of a uid sends its `online` to all).
pub fn wait_subscribers_known(srv: &Server, subs: &[&Sub]) {
    let mut seen: Vec<HashSet<u64>> = vec![HashSet::new(); subs.len()];
    let deadline = Instant::now() + LONG;
    let mut probes = Vec::new();
    for i in 0.. {
        assert!(
            Instant::now() < deadline,
            "subscribers not known everywhere"
        );
        let uid = format!("probe{i}");
        probes.push(srv.login_acked(&uid));
        for (k, s) in subs.iter().enumerate() {
            let v = s.wait("probe online", LONG, |v| {
                v["event"] == "online" && v["uid"] == uid
            });
            seen[k].insert(v["worker"].as_u64().unwrap_or(99));
        }
        if seen.iter().all(|w| w.len() >= srv.workers) {
            break;
        }
    }
    for p in probes {
        p.close();
    }
}

pub fn php_ready() -> bool {
    require("php (Debian package php-cli)", have_program("php"))
}

pub fn node_ready() -> bool {
    require("node (Debian package nodejs)", have_program("node"))
        && require(
            "socket.io-client packages (npm ci in scripts/node)",
            workspace_root()
                .join("scripts/node/node_modules/socket.io-client-v4/package.json")
                .exists(),
        )
}

/// A socket.io-client 4 chat client under Node, logged in as `uid`.
pub struct SioChat {
    /// The node process and its lines.
    pub lines: Lines,
    /// Where its commands go.
    pub stdin: std::process::ChildStdin,
}

impl SioChat {
    pub fn start(port: u16, uid: &str) -> SioChat {
        let mut cmd = Command::new("node");
        cmd.arg(workspace_root().join("scripts/node/sio-chat.js"))
            .args(["v4", &format!("http://127.0.0.1:{port}"), uid])
            .stdin(Stdio::piped());
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut group = Group::spawn(&mut cmd).expect("spawn node");
        let stdin = group.child.stdin.take().expect("stdin");
        let out = group.child.stdout.take().expect("stdout");
        let lines = Lines {
            group,
            rx: lines_of(out),
            name: format!("sio-chat {uid}"),
        };
        lines.wait("logged_in", LONG, |l| l == "logged_in");
        SioChat { lines, stdin }
    }

    pub fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("node stdin");
        self.stdin.flush().ok();
    }
}

/// Logs in `uid` on the WebSocket port until its `login` event names a worker other than
/// `not` (the kernel spreads connections; a few tries suffice).
pub fn login_elsewhere(srv: &Server, sub: &Lines, uid: &str, not: u64) -> Ws {
    for _ in 0..40 {
        let c = srv.login_acked(uid);
        let l = sub.wait("login", LONG, |l| {
            l.contains("\"event\":\"login\"") && l.contains(&format!("\"uid\":\"{uid}\""))
        });
        let v: Value = serde_json::from_str(&l).expect("json");
        if v["worker"].as_u64() != Some(not) {
            return c;
        }
        c.close();
    }
    panic!("{uid} never landed outside worker {not}");
}

/// `php -S` serving `scripts/php/webhook.php` on a free port (checking signatures made with
/// `secret`), recording events into a file: the port, the server (killed on drop), the
/// directory of the file (removed on drop) and the file.
pub fn webhook_endpoint(secret: &str) -> (u16, Group, TempDir, std::path::PathBuf) {
    let dir = TempDir::new();
    let log = dir.path.join("events.log");
    let port = free_port();
    let mut cmd = Command::new("php");
    cmd.args([
        "-S",
        &format!("127.0.0.1:{port}"),
        workspace_root()
            .join("scripts/php/webhook.php")
            .to_str()
            .expect("path"),
    ])
    .env("HERALD_WEBHOOK_SECRET", secret)
    .env("HERALD_EVENTS_LOG", &log)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let g = Group::spawn(&mut cmd).expect("spawn php -S");
    assert!(
        wait_until(LONG, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "php -S did not listen"
    );
    (port, g, dir, log)
}

/// The events the webhook endpoint recorded so far.
pub fn webhook_recorded(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
