//! Shared end-to-end harness: start the real `herald` binary on free loopback ports in its own
//! temporary directory, talk to it with real clients (tungstenite WebSocket, raw TCP lines, raw
//! HTTP/1.1), inspect its processes through `/proc`, and reap every process it started, even
//! when a test panics.
//!
//! Everything here synchronises on events (a port accepting, a reply line, a frame, a process
//! appearing or vanishing) with a deadline; sleeps are used only as the poll interval of such
//! waits, or as the window of a "nothing more arrives" check.
// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocket;
use tungstenite::Message;

pub mod tls;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// How long a server may take to listen on all its ports.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// Default wait for one reply or one message.
pub const REPLY: Duration = Duration::from_secs(5);
/// Poll interval of the event waits below.
const POLL: Duration = Duration::from_millis(10);

/// Root of the checked-out workspace (for `scripts/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Temporary directory and process groups
// ---------------------------------------------------------------------------------------------

/// A directory under the system temp dir, removed on drop (kept when `HERALD_KEEP_TEST_DIR` is
/// set, for post-mortems). Short paths, because the server may put Unix sockets beside its pid
/// file and `sun_path` holds only 108 bytes.
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    pub fn new() -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "hrld-{}-{}-{:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            nanos
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HERALD_KEEP_TEST_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A spawned process that leads its own process group (`process_group(0)`), so that it and
/// every process it forks can be killed at once. Drop sends SIGTERM to the leader, waits a
/// little, then SIGKILLs the whole group, whether or not the leader is still alive.
pub struct Group {
    /// The group leader.
    pub child: Child,
    /// Its exit status once reaped.
    status: Option<ExitStatus>,
}

impl Group {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Group> {
        cmd.process_group(0);
        let child = cmd.spawn()?;
        Ok(Group {
            child,
            status: None,
        })
    }

    /// The leader's pid, which is also the group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reaps the leader if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits up to `limit` for the leader to exit (reaping it).
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig` to the leader only.
    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = self.pid() as libc::pid_t;
        if self.try_wait().is_none() {
            signal(self.pid(), libc::SIGTERM);
            self.wait_timeout(Duration::from_secs(3));
        }
        // SAFETY: killpg only sends a signal; the group id is our own child's pid, and the
        // group exists only while one of the processes we started is in it.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends signal `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill only sends a signal to a pid we obtained from a process we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Raises the soft open-file limit of the test process to its hard limit (the tests hold
/// hundreds of sockets at once).
pub fn raise_nofile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: getrlimit/setrlimit on a local, initialised struct.
        unsafe {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------------------------

/// Fields of `/proc/PID/stat` after the command name: `[state, ppid, pgrp, ...]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().map(|s| s != "Z" && s != "X").unwrap_or(false),
        None => false,
    }
}

/// Live (non-zombie) children of `pid`, gathered over all its threads.
pub fn children_of(pid: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(s) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                s.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .filter(|p| is_alive(*p)),
            );
        }
    }
    out
}

/// Every live process whose process group is `pgid`.
pub fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
                && f[0] != "Z"
                && f[0] != "X"
            {
                out.push(pid);
            }
        }
    }
    out
}

/// Hex form of `127.0.0.1:port` as written in `/proc/net/tcp`.
fn proc_net_addr(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => {
            let o = a.ip().octets();
            format!(
                "{:02X}{:02X}{:02X}{:02X}:{:04X}",
                o[3],
                o[2],
                o[1],
                o[0],
                a.port()
            )
        }
        SocketAddr::V6(_) => String::new(),
    }
}

/// A snapshot of which process holds which loopback TCP socket: answers "which worker holds
/// the server side of this client connection" by matching `/proc/net/tcp` inodes against each
/// process's fds.
pub struct Owners {
    /// (server-side local address, server-side remote address) -> socket inode.
    inodes: std::collections::HashMap<(String, String), String>,
    /// socket inode -> pid.
    holders: std::collections::HashMap<String, u32>,
}

impl Owners {
    /// Takes the snapshot over `pids`.
    pub fn snapshot(pids: &BTreeSet<u32>) -> Owners {
        let mut inodes = std::collections::HashMap::new();
        let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                inodes.insert((f[1].to_owned(), f[2].to_owned()), f[9].to_owned());
            }
        }
        let mut holders = std::collections::HashMap::new();
        for pid in pids {
            for fd in fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(link) = fs::read_link(fd.path()) {
                    let link = link.to_string_lossy().into_owned();
                    if let Some(inode) = link
                        .strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                    {
                        holders.insert(inode.to_owned(), *pid);
                    }
                }
            }
        }
        Owners { inodes, holders }
    }

    /// The pid holding the server side of client socket `client`.
    pub fn owner(&self, client: &TcpStream) -> Option<u32> {
        let server_side = (
            proc_net_addr(client.peer_addr().ok()?),
            proc_net_addr(client.local_addr().ok()?),
        );
        let inode = self.inodes.get(&server_side)?;
        self.holders.get(inode).copied()
    }
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Every port this test process handed out: never handed out twice. The tests of one file run
/// in parallel threads, and the kernel may give the same free port to two of them a moment
/// apart; both servers would then bind it (their listeners use `SO_REUSEPORT`) and share its
/// connections, one server's WebSocket port answering as the other's HTTP port.
static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());

/// `n` distinct loopback ports that are free right now (bound together, then released), none
/// handed out before by this process. The server binds them a moment later; should another
/// process take one meanwhile, the server reports an address in use and `Builder::start`
/// retries with new ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let mut held: Vec<std::net::TcpListener> = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("addr").port();
        // Held until all are chosen, so the kernel gives a new one each time.
        held.push(l);
        if given.insert(port) {
            ports.push(port);
        }
    }
    ports
}

/// A port that is free right now (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// How a test wants its server.
#[derive(Clone)]
pub struct Builder {
    workers: usize,
    ws: bool,
    text: bool,
    http: bool,
    sets: Vec<String>,
    env: Vec<(String, String)>,
    /// Hard and soft RLIMIT_NOFILE for the server (None: inherited).
    nofile: Option<u64>,
    /// Serve the Socket.IO port (off by default in tests).
    socketio: bool,
    /// `-c FILE`: a configuration file under the flags and `--set`s.
    config: Option<PathBuf>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            workers: 1,
            ws: true,
            text: true,
            http: true,
            sets: Vec::new(),
            env: Vec::new(),
            nofile: None,
            socketio: false,
            config: None,
        }
    }
}

impl Builder {
    /// `--workers n` (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// `-c path`: a configuration file.
    pub fn config(mut self, path: &Path) -> Self {
        self.config = Some(path.to_path_buf());
        self
    }

    /// `--set key=value`.
    pub fn set(mut self, kv: &str) -> Self {
        self.sets.push(kv.to_owned());
        self
    }

    /// `--set login_reply=true`: logins are acknowledged, so tests can wait for them.
    pub fn login_reply(self) -> Self {
        self.set("login_reply=true")
    }

    /// `--ws off`.
    pub fn no_ws(mut self) -> Self {
        self.ws = false;
        self
    }

    /// `--http off`.
    pub fn no_http(mut self) -> Self {
        self.http = false;
        self
    }

    /// `--text off`.
    pub fn no_text(mut self) -> Self {
        self.text = false;
        self
    }

    /// `--socketio` on a free port (see `Server::socketio`).
    pub fn socketio(mut self) -> Self {
        self.socketio = true;
        self
    }

    /// Caps the server's open files (hard and soft limit), to exercise `EMFILE`.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// An environment variable for the server.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Starts the server and waits until every enabled port accepts connections and (for
    /// several workers) every worker process exists. Retries with new ports when the server
    /// reports an address in use. Panics with the server's log when it cannot start.
    pub fn start(self) -> Server {
        raise_nofile();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            match self.try_start() {
                Ok(server) => return server,
                Err(log) => {
                    let lower = log.to_lowercase();
                    if !lower.contains("in use") {
                        panic!("herald did not start:\n{log}");
                    }
                    last_log = log;
                }
            }
        }
        panic!("herald kept finding its ports in use:\n{last_log}");
    }

    fn try_start(&self) -> Result<Server, String> {
        let dir = TempDir::new();
        let ports = free_ports(4);
        let (ws, text, http) = (ports[0], ports[1], ports[2]);
        let pid_file = dir.path.join("herald.pid");
        let log_path = dir.path.join("stderr.log");
        let addr = |on: bool, p: u16| {
            if on {
                format!("127.0.0.1:{p}")
            } else {
                "off".to_owned()
            }
        };
        let mut args: Vec<String> = vec![
            "start".into(),
            "--workers".into(),
            self.workers.to_string(),
            "--ws".into(),
            addr(self.ws, ws),
            "--text".into(),
            addr(self.text, text),
            "--http".into(),
            addr(self.http, http),
            "--socketio".into(),
            addr(self.socketio, ports[3]),
            "--pid-file".into(),
            pid_file.to_string_lossy().into_owned(),
        ];
        for kv in &self.sets {
            args.push("--set".into());
            args.push(kv.clone());
        }
        if let Some(c) = &self.config {
            args.push("-c".into());
            args.push(c.to_string_lossy().into_owned());
        }
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path.join("stdout.log")).expect("stdout log"))
            .stderr(fs::File::create(&log_path).expect("stderr log"))
            .env_remove("NOTIFY_SOCKET");
        // Readiness is also awaited through the systemd protocol (READY=1 once every worker
        // listens and start-up is over: the master ignores reload signals before that), unless
        // the test watches NOTIFY_SOCKET itself.
        let notify = if self.env.iter().any(|(k, _)| k == "NOTIFY_SOCKET") {
            None
        } else {
            let path = dir.path.join("notify.sock");
            let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
            cmd.env("NOTIFY_SOCKET", &path);
            Some(sock)
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
            // `lim` is a plain value copied into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let group = Group::spawn(&mut cmd).map_err(|e| format!("spawn {BIN}: {e}"))?;
        let mut server = Server {
            group,
            ws,
            text,
            http,
            socketio: ports[3],
            workers: self.workers,
            pid_file,
            log_path,
            args,
            dir,
        };
        let deadline = Instant::now() + START_DEADLINE;
        let mut pending: Vec<u16> = [
            (self.ws, ws),
            (self.text, text),
            (self.http, http),
            (self.socketio, ports[3]),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, p)| *p)
        .collect();
        loop {
            if let Some(st) = server.group.try_wait() {
                return Err(format!(
                    "master exited with {st} before listening\n{}",
                    server.log()
                ));
            }
            pending.retain(|p| TcpStream::connect(("127.0.0.1", *p)).is_err());
            let workers_up = self.workers <= 1 || server.worker_pids().len() >= self.workers;
            if pending.is_empty() && workers_up {
                if let Some(sock) = notify {
                    await_ready(&sock, &server);
                }
                return Ok(server);
            }
            if Instant::now() >= deadline {
                panic!(
                    "herald not ready after {START_DEADLINE:?}: ports not accepting {pending:?}, \
                     workers {:?}\n{}",
                    server.worker_pids(),
                    server.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Waits (at most 5 s) for the master's `READY=1` on `sock`. Without it the test goes on, with
/// a note: the ports already accept, and a missing READY=1 is for the systemd test to catch.
/// The socket is dropped afterwards, so later notifications fail fast at the sender.
fn await_ready(sock: &std::os::unix::net::UnixDatagram, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            eprintln!(
                "note: no READY=1 from master {} within 5 s of its ports accepting",
                server.master_pid()
            );
            return;
        }
        sock.set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .ok();
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return;
            }
        }
    }
}

/// A running `herald start` (master and workers, one process group) on its own ports.
pub struct Server {
    /// Master process (group leader).
    pub group: Group,
    /// WebSocket port.
    pub ws: u16,
    /// Text port.
    pub text: u16,
    /// HTTP port.
    pub http: u16,
    /// Socket.IO port (served only when the builder asked for it).
    pub socketio: u16,
    /// Requested worker count.
    pub workers: usize,
    /// `--pid-file`.
    pub pid_file: PathBuf,
    log_path: PathBuf,
    /// The arguments it was started with.
    pub args: Vec<String>,
    /// Its temporary directory (dropped last).
    pub dir: TempDir,
}

impl Server {
    /// A builder with the defaults (one worker, every port on).
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// One worker, defaults, every port on.
    pub fn start() -> Server {
        Builder::default().start()
    }

    /// Master pid.
    pub fn master_pid(&self) -> u32 {
        self.group.pid()
    }

    /// Live worker pids (children of the master).
    pub fn worker_pids(&self) -> BTreeSet<u32> {
        children_of(self.master_pid())
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Connects a WebSocket client (no login).
    pub fn ws_connect(&self) -> Ws {
        ws_connect(self.ws)
    }

    /// Connects and sends `uid` as the first text frame (seed mode). Does not wait: the login
    /// is processed by the server asynchronously.
    pub fn login(&self, uid: &str) -> Ws {
        let mut c = self.ws_connect();
        c.send_text(uid);
        c
    }

    /// Connects, logs in and waits for `login success, your uid is UID` (needs `login_reply`).
    /// After this the uid is in the registry of the worker holding the connection.
    pub fn login_acked(&self, uid: &str) -> Ws {
        let mut c = self.login(uid);
        let got = c.recv_text(REPLY);
        assert_eq!(
            got,
            format!("login success, your uid is {uid}"),
            "login reply"
        );
        c
    }

    /// Sends `bytes` on a fresh text connection and returns the reply lines (as many as `bytes`
    /// has newlines, at least one).
    pub fn text_push(&self, bytes: &[u8]) -> Vec<u8> {
        text_push(self.text, bytes)
    }

    /// Whether every worker (at least `workers` rows of `/api/stats`) says `cluster_up` is
    /// `up`: in a cluster, a push on a new connection may land on any of them.
    pub fn workers_cluster_up(&self, up: bool) -> bool {
        let r = self.http(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["workers"].as_array().is_some_and(|rows| {
            rows.len() >= self.workers && rows.iter().all(|w| w["cluster_up"] == u64::from(up))
        })
    }

    /// Pushes `line` (with its `\n`) on fresh text connections until the reply is `ok\n`: the
    /// synchronisation for logins made without `login_reply`, whose registration the server
    /// does asynchronously. A `fail` reply means no connection received the push, so the
    /// client still receives exactly one copy. Panics after `limit`.
    pub fn push_until_ok(&self, line: &[u8], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.text_push(line);
            if reply == b"ok\n" {
                return;
            }
            assert_eq!(reply, b"fail\n", "unexpected reply to {}", show(line));
            assert!(
                Instant::now() < deadline,
                "push {} never answered ok within {limit:?}\n{}",
                show(line),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Raw HTTP exchange on a fresh connection: writes `req`, returns one parsed response.
    pub fn http(&self, req: &[u8]) -> HttpResponse {
        http(self.http, req)
    }

    /// With several workers: waits until pushes entering any worker reach a client on any
    /// other worker (the IPC mesh is connected). A probe client logs in; pushes on fresh text
    /// connections (which the kernel spreads over the workers) must answer `ok` 10 times per
    /// worker in a row. Any `fail` restarts the count; panics after 15 s.
    pub fn wait_mesh(&self) {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let uid = format!("probe-{}", SEQ.fetch_add(1, Ordering::SeqCst));
        let probe = self.login(&uid);
        let line = format!("{{\"uid\":\"{uid}\",\"probe\":true}}\n");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut in_a_row = 0;
        while in_a_row < 10 * self.workers.max(1) {
            let reply = self.text_push(line.as_bytes());
            if reply == b"ok\n" {
                in_a_row += 1;
            } else {
                in_a_row = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "pushes did not reach every worker within 15 s (last reply {})\n{}",
                show(&reply),
                self.log()
            );
        }
        probe.close();
    }

    /// Proves the server still works: a push on a fresh text connection reaches `client`
    /// (logged in as `uid`) with exactly these bytes.
    pub fn still_serves(&self, client: &mut Ws, uid: &str, n: u32) {
        let line = format!("{{\"uid\":\"{uid}\",\"alive\":{n}}}");
        assert_eq!(
            self.text_push(format!("{line}\n").as_bytes()),
            b"ok\n",
            "server no longer answers pushes\n{}",
            self.log()
        );
        assert_eq!(client.recv_text(REPLY), line);
    }

    /// Runs `herald ARGS --pid-file F` and returns its output, reaping the master meanwhile (a
    /// command that waits for the master to vanish would otherwise wait on our zombie). Panics
    /// if the command runs longer than `limit`.
    pub fn cli(&mut self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--pid-file")
            .arg(&self.pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut g = Group::spawn(&mut cmd).expect("spawn herald cli");
        let (t_out, t_err) = read_pipes(&mut g);
        let deadline = Instant::now() + limit;
        let status = loop {
            self.group.try_wait();
            if let Some(st) = g.try_wait() {
                break st;
            }
            if Instant::now() >= deadline {
                drop(g);
                panic!(
                    "`herald {}` did not finish within {limit:?}\n{}",
                    args.join(" "),
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        };
        Output {
            status,
            stdout: t_out.join().unwrap_or_default(),
            stderr: t_err.join().unwrap_or_default(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = {
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(60)..].join("\n")
            };
            eprintln!(
                "--- herald {} (master {}) stderr, last 60 lines ---\n{tail}\n--- end ---",
                self.args.join(" "),
                self.master_pid()
            );
        }
        // Then the fields drop in declaration order: `group` (SIGTERM, then SIGKILL of the
        // whole process group), and last the temporary directory.
    }
}

/// Printable form of bytes for assertion messages (truncated).
pub fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(400)]);
    let more = if b.len() > 400 {
        format!("… ({} bytes)", b.len())
    } else {
        String::new()
    };
    format!("{s:?}{more}")
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// A blocking tungstenite client with deadlines on every read.
pub struct Ws {
    /// The connection.
    pub ws: WebSocket<TcpStream>,
}

/// How a read on a client ended, when it did not yield a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The connection was closed (cleanly or by reset).
    Closed(String),
}

/// Opens a WebSocket to `ws://127.0.0.1:PORT/` (handshake done).
pub fn ws_connect(port: u16) -> Ws {
    ws_path(port, "/")
}

/// Opens a WebSocket to `ws://127.0.0.1:PORT{path}` (`/?envelope=1`, `/?since=…`).
pub fn ws_path(port: u16, path: &str) -> Ws {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect ws port");
    stream.set_nodelay(true).ok();
    stream.set_read_timeout(Some(REPLY)).ok();
    stream.set_write_timeout(Some(REPLY)).ok();
    let (ws, _resp) =
        tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream).expect("ws handshake");
    Ws { ws }
}

/// The next text frame of `c`, as JSON.
pub fn recv_json(c: &mut Ws) -> serde_json::Value {
    let t = c.recv_text(REPLY);
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
}

/// Logs `uid` in on `path` of `srv` and waits for its first frame (with a history: the
/// `position` or `recovery` answer).
pub fn login_env(srv: &Server, path: &str, uid: &str) -> (Ws, serde_json::Value) {
    let mut c = ws_path(srv.ws, path);
    c.send_text(uid);
    let head = recv_json(&mut c);
    (c, head)
}

impl Ws {
    /// Sends a text frame.
    pub fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .expect("send text frame");
    }

    /// Reads the next message of any kind (pings included) within `limit`.
    pub fn recv(&mut self, limit: Duration) -> Result<Message, Ended> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ended::Timeout);
            }
            self.ws.get_mut().set_read_timeout(Some(left)).ok();
            match self.ws.read() {
                Ok(m) => return Ok(m),
                Err(tungstenite::Error::Io(e))
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => return Err(Ended::Closed(e.to_string())),
            }
        }
    }

    /// The next text message within `limit`, skipping pings and pongs; `None` on timeout;
    /// panics on anything else (binary, close, connection error), showing what came.
    pub fn try_recv_text(&mut self, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(Ended::Timeout) => return None,
                Err(Ended::Closed(why)) => panic!("connection ended while awaiting text: {why}"),
            }
        }
    }

    /// The next text message, which must arrive within `limit`.
    pub fn recv_text(&mut self, limit: Duration) -> String {
        self.try_recv_text(limit)
            .unwrap_or_else(|| panic!("no text frame within {limit:?}"))
    }

    /// Asserts that no text message arrives within `window`.
    pub fn expect_silence(&mut self, window: Duration) {
        if let Some(t) = self.try_recv_text(window) {
            panic!("expected no message, got text {t:?}");
        }
    }

    /// Sends a ping and waits for its pong: proves the server has read everything this client
    /// sent before it (frames of one connection are handled in order).
    pub fn roundtrip(&mut self) {
        self.ws
            .send(Message::Ping(b"sync".to_vec().into()))
            .expect("send ping");
        let deadline = Instant::now() + REPLY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(Message::Pong(p)) if p.as_ref() == b"sync" => return,
                Ok(Message::Pong(_)) | Ok(Message::Ping(_)) => continue,
                Ok(other) => panic!("awaiting pong, got {other:?}"),
                Err(e) => panic!("awaiting pong: {e:?}"),
            }
        }
    }

    /// Close handshake: sends Close(1000) and reads until the server has answered and closed.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + REPLY;
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }

    /// True if the connection turns out closed within `limit` (messages are discarded).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(_) => continue,
                Err(Ended::Timeout) => return false,
                Err(Ended::Closed(_)) => return true,
            }
        }
    }

    /// The underlying TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// Text port client
// ---------------------------------------------------------------------------------------------

/// A raw TCP connection to the text port, reading replies with deadlines.
pub struct TextConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// How a raw read loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Eof {
    /// Orderly close (read returned 0).
    Fin,
    /// Connection reset.
    Reset,
    /// Still open at the deadline.
    Open,
}

impl TextConn {
    /// Connects to `port` on loopback.
    pub fn connect(port: u16) -> TextConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect text port");
        stream.set_nodelay(true).ok();
        TextConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> TextConn {
        TextConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads until one full line, a close, or `limit`, without panicking: returns the bytes
    /// seen and `Eof::Open` if the line arrived (or the deadline passed with the socket open).
    pub fn read_until_line(&mut self, limit: Duration) -> (Vec<u8>, Eof) {
        let deadline = Instant::now() + limit;
        loop {
            if self.buf.contains(&b'\n') {
                return (std::mem::take(&mut self.buf), Eof::Open);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (std::mem::take(&mut self.buf), Eof::Open);
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (std::mem::take(&mut self.buf), Eof::Fin),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return (std::mem::take(&mut self.buf), Eof::Reset),
            }
        }
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .set_write_timeout(Some(REPLY))
            .expect("write timeout");
        self.stream.write_all(bytes).expect("write to text port");
    }

    /// Reads until `n` newline-terminated replies have arrived; returns exactly their bytes.
    /// Panics on timeout or close, showing what arrived.
    pub fn read_lines(&mut self, n: usize, limit: Duration) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            let have = self.buf.iter().filter(|b| **b == b'\n').count();
            if have >= n {
                let mut seen = 0;
                let cut = self
                    .buf
                    .iter()
                    .position(|b| {
                        if *b == b'\n' {
                            seen += 1;
                        }
                        seen == n
                    })
                    .map(|i| i + 1)
                    .unwrap_or(0);
                return self.buf.drain(..cut).collect();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "wanted {n} reply lines within {limit:?}, got {}",
                show(&self.buf)
            );
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "text connection closed after {} (wanted {n} lines)",
                    show(&self.buf)
                ),
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("text read failed after {}: {e}", show(&self.buf)),
            }
        }
    }

    /// Reads until the server closes the connection or `limit` passes; returns the bytes
    /// received and how it ended.
    pub fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, Eof) {
        read_until_closed(&mut self.stream, &mut self.buf, limit)
    }
}

/// Reads `stream` until EOF/reset or `limit`, appending to (and returning a copy of) `buf`.
pub fn read_until_closed(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> (Vec<u8>, Eof) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (buf.clone(), Eof::Open);
        }
        stream.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) => return (buf.clone(), Eof::Fin),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (buf.clone(), Eof::Reset),
        }
    }
}

/// Sends `bytes` on a fresh connection to the text port and returns the reply lines: as many
/// as `bytes` holds newlines (at least one).
pub fn text_push(port: u16, bytes: &[u8]) -> Vec<u8> {
    let n = bytes.iter().filter(|b| **b == b'\n').count().max(1);
    let mut c = TextConn::connect(port);
    c.send(bytes);
    let out = c.read_lines(n, REPLY);
    let _ = c.stream.shutdown(Shutdown::Both);
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// One parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Status line and headers, as received.
    pub head: String,
    /// Body (de-chunked if it was chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 connection that can carry several requests (keep-alive).
pub struct HttpConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connects to `port` on loopback.
    pub fn connect(port: u16) -> HttpConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect http port");
        stream.set_nodelay(true).ok();
        stream.set_write_timeout(Some(REPLY)).ok();
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw request bytes (errors ignored: the server may close early, e.g. on 413).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).ok();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(k) => {
                self.buf.extend_from_slice(&chunk[..k]);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                Instant::now() < deadline
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }

    /// Reads exactly one response (Content-Length, chunked, or until close).
    pub fn read_response(&mut self, limit: Duration) -> HttpResponse {
        let deadline = Instant::now() + limit;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill(deadline),
                "no complete HTTP response head within {limit:?}; got {}",
                show(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end - 4]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let mut resp = HttpResponse {
            status,
            head,
            body: Vec::new(),
        };
        self.buf.drain(..head_end);
        let chunked = resp
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    assert!(self.fill(deadline), "truncated chunked response body");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill(deadline), "truncated chunk");
                }
                resp.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            while self.buf.len() < len {
                assert!(
                    self.fill(deadline),
                    "body shorter than Content-Length {len}: {}",
                    show(&self.buf)
                );
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp.status != 204 && resp.status != 304 {
            while self.fill(deadline) {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Reads until the server closes; returns how it ended and any extra bytes.
    pub fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, Eof) {
        read_until_closed(&mut self.stream, &mut self.buf, limit)
    }
}

/// Sends `req` on a fresh connection to `port` and reads one response.
pub fn http(port: u16, req: &[u8]) -> HttpResponse {
    let mut c = HttpConn::connect(port);
    c.send(req).expect("write http request");
    c.read_response(REPLY)
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A GET request for `target` with `Connection: close`.
pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A form POST to `/` with `body`, `Connection: close`.
pub fn post_form(body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// External runtimes (interop)
// ---------------------------------------------------------------------------------------------

/// Whether `prog --version` runs.
pub fn have_program(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Handles a missing external runtime: under CI (env `CI` set) it is a failure; locally the
/// test prints a note and returns `false` so the caller can skip.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing, and CI is set: .ci/run must install it");
    }
    eprintln!("SKIP: {what} is missing (set up by .ci/run); skipping this test locally");
    false
}

/// Reads a child's stdout and stderr on threads, so a chatty command cannot block on a full
/// pipe; join the handles for the bytes.
fn read_pipes(
    g: &mut Group,
) -> (
    std::thread::JoinHandle<Vec<u8>>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let out = g.child.stdout.take().expect("stdout");
    let err = g.child.stderr.take().expect("stderr");
    (drain(out), drain(err))
}

/// Runs a command to completion with a time limit, in its own process group (killed on
/// timeout).
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Group::spawn(cmd).expect("spawn");
    let (t_out, t_err) = read_pipes(&mut g);
    let status = g
        .wait_timeout(limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"));
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// `path` relative to the workspace root, as a string.
pub fn script(path: &str) -> String {
    workspace_root().join(path).to_string_lossy().into_owned()
}

/// True if `p` exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// `hmac`-mode tokens, made as a PHP backend makes them (one `hash_hmac` call).
#[allow(unused_imports)] // not every test file makes tokens
pub use herald_worker::auth::hmac_token;

/// A real `redis-server` on a free loopback port, started by the test and killed when dropped
/// (no file written: no RDB, no AOF).
pub struct Redis {
    /// The server process.
    child: Option<std::process::Child>,
    /// Its port.
    pub port: u16,
}

impl Redis {
    /// Whether `redis-server` can be run here (under CI its absence is a failure).
    pub fn available() -> bool {
        require(
            "redis-server (apt install redis-server)",
            have_program("redis-server"),
        )
    }

    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    /// Starts one on `port` (a restart keeps the port) and waits until it answers `PING`.
    pub fn start_on(port: u16) -> Redis {
        Redis::start_args(port, &[])
    }

    /// Starts one on a free port with extra arguments (`--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Redis {
        Redis::start_args(free_port(), extra)
    }

    /// Starts one speaking TLS only, on `port`, with this certificate, key and CA (clients
    /// need no certificate of their own).
    pub fn start_tls(port: u16, cert: &str, key: &str, ca: &str) -> Redis {
        let r = Redis::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                ca,
                "--tls-auth-clients",
                "no",
            ],
        );
        // The TLS port accepts TCP once it listens; the nodes' handshakes test the rest.
        assert!(
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "redis-server with TLS on port {port} did not listen"
        );
        r
    }

    /// Starts one on `port` with `extra` arguments.
    fn start_args(port: u16, extra: &[&str]) -> Redis {
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = Redis::spawn(port, &args);
        assert!(
            wait_until(Duration::from_secs(10), || r.answers()),
            "redis-server on port {port} did not answer PING"
        );
        r
    }

    /// Runs `redis-server` with `args` on loopback, writing no file.
    fn spawn(port: u16, args: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        Redis {
            child: Some(child),
            port,
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers `PING` (raw RESP over TCP), with `+PONG` or, when a password is
    /// required, an authentication error.
    pub fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(500))).ok();
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    }

    /// Kills it at once (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The opening handshake's request.
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Connects to the WebSocket port (with a receive buffer of `rcvbuf` bytes, if given), sends
/// the handshake and reads the answer's head: the socket and the status, or what went wrong
/// (no answer within `limit` is an error naming the hang).
pub fn ws_open(
    port: u16,
    rcvbuf: Option<usize>,
    limit: Duration,
) -> Result<(TcpStream, u16), String> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).map_err(|e| e.to_string())?;
    }
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    sock.connect_timeout(&addr.into(), limit)
        .map_err(|e| format!("connect: {e}"))?;
    let mut s: TcpStream = sock.into();
    s.set_nodelay(true).ok();
    s.set_write_timeout(Some(limit)).ok();
    s.write_all(UPGRADE).map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + limit;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so nothing after the head (a login reply) is taken from the socket.
    while !head.ends_with(b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no answer to the handshake within {limit:?} (got {})",
                show(&head)
            ));
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("closed after {}", show(&head))),
            Ok(_) => head.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("read: {e} after {}", show(&head))),
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((s, status))
}

/// A masked client frame (final) with `opcode` around `payload`.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut v = vec![0x80 | opcode];
    let n = payload.len();
    assert!(n < 126, "short frames only");
    v.push(0x80 | n as u8);
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    v
}

/// A raw WebSocket client logged in as `uid` (the login reply is left unread).
pub fn ws_login(port: u16, uid: &str, rcvbuf: Option<usize>) -> TcpStream {
    let (mut s, status) = ws_open(port, rcvbuf, REPLY).expect("handshake");
    assert_eq!(status, 101, "handshake for {uid}");
    s.write_all(&masked(0x1, uid.as_bytes())).expect("login");
    s
}

/// The lines `out` (a child's stdout, a socket) yields, one at a time, read by a thread of
/// their own so that a test waits on them with a deadline.
pub fn lines_of(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
