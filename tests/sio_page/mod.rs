//! A Socket.IO v4 page under Node for the recovery tests: `scripts/node/sio-recover.js` (the
//! real socket.io-client 4.x), commanded on its stdin, its lines read on a channel, and reaped
//! when dropped; and a TCP [`Switch`] standing for a load balancer, so that a page's reconnection
//! (to the same URL) lands on another node. Shared by `tests/recovery_sio.rs`,
//! `tests/history_cluster.rs` and `tests/history_cluster_all.rs`.
#![allow(dead_code)]

use crate::common::{lines_of, require, workspace_root};
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Whether `node` and socket.io-client 4 are here (under CI their absence is a failure).
pub fn sio_v4_ready() -> bool {
    require(
        "node (Debian package nodejs)",
        crate::common::have_program("node"),
    ) && require(
        "socket.io-client packages (npm ci in scripts/node)",
        workspace_root()
            .join("scripts/node/node_modules/socket.io-client-v4/package.json")
            .exists(),
    )
}

/// One Node page: its process, its stdin and the lines it prints.
pub struct Page {
    /// The node process (killed and reaped on drop).
    child: Child,
    /// Commands to the page (`None` for a script that reads none).
    stdin: Option<ChildStdin>,
    /// Its output, a line at a time.
    lines: mpsc::Receiver<String>,
}

impl Page {
    /// A `sio-recover.js` page of `uid` on the WebSocket transport.
    pub fn spawn(port: u16, uid: &str) -> Page {
        Page::spawn_with(port, uid, "websocket")
    }

    /// With `transports`: `websocket`, or `default` (long-polling first, then the upgrade).
    pub fn spawn_with(port: u16, uid: &str, transports: &str) -> Page {
        let child = Command::new("node")
            .arg(workspace_root().join("scripts/node/sio-recover.js"))
            .args([
                &format!("http://127.0.0.1:{port}"),
                uid,
                transports,
                "90000",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        Page::of(child)
    }

    /// A page of a node process already started with its stdout piped (and its stdin, if it
    /// reads commands).
    pub fn of(mut child: Child) -> Page {
        let stdin = child.stdin.take();
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Page {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for the page's first `connect` line, which must say it is a new session (not
    /// recovered); returns it (with its socket id), and the `new_msg` lines seen on the way.
    pub fn first_connect(&self, msgs: &mut Vec<String>) -> String {
        let first = self.wait_for("connect", msgs);
        assert!(first.contains("recovered=false"), "{first}");
        first
    }

    /// Waits for a line starting with `word`, returning it, and every `new_msg` line seen
    /// on the way (appended to `msgs`).
    pub fn wait_for(&self, word: &str, msgs: &mut Vec<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(m) = l.strip_prefix("new_msg ") {
                        msgs.push(m.to_string());
                    }
                    if l.split(' ').next() == Some(word) {
                        return l;
                    }
                }
                Err(_) => panic!("no `{word}` line within 20 s (messages so far: {msgs:?})"),
            }
        }
    }

    /// Collects `new_msg` lines until `n` were seen in all.
    pub fn until_messages(&self, msgs: &mut Vec<String>, n: usize) {
        while msgs.len() < n {
            self.wait_for("new_msg", msgs);
        }
    }

    /// Waits for the page's process to end by itself.
    pub fn wait_exit(&mut self) {
        let _ = self.child.wait();
    }

    /// Sends the page a command line.
    pub fn command(&mut self, c: &str) {
        let stdin = self.stdin.as_mut().expect("a page that reads commands");
        writeln!(stdin, "{c}").expect("write to node");
        stdin.flush().ok();
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP switch: connections to `port` go to the target port of the moment.
pub struct Switch {
    /// Where the page connects.
    pub port: u16,
    /// Where its connections go now.
    target: Arc<AtomicU16>,
    /// Tells the accepting thread to end.
    stop: Arc<AtomicBool>,
}

impl Switch {
    /// A switch sending to port `to` until told otherwise.
    pub fn start(to: u16) -> Switch {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind switch");
        l.set_nonblocking(true).expect("nonblocking");
        let port = l.local_addr().expect("addr").port();
        let target = Arc::new(AtomicU16::new(to));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((down, _)) => {
                        down.set_nonblocking(false).ok();
                        let Ok(up) = TcpStream::connect(("127.0.0.1", t.load(Ordering::SeqCst)))
                        else {
                            continue;
                        };
                        pipe(&down, &up);
                        pipe(&up, &down);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Switch { port, target, stop }
    }

    /// New connections go to `port` from now on.
    pub fn to(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread; at the end, `to` is told no more comes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut a), Ok(mut b)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
        let _ = a.shutdown(Shutdown::Read);
    });
}
