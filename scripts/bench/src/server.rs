//! Starting and stopping the real server: `herald start` on free loopback ports with its own
//! temporary directory, in its own process group (so the group can be killed whole, even on
//! error, by the kill list or a signal), waiting until its ports answer and its workers exist.
//! It can be started under a wrapper command (`--server-wrap`, e.g. valgrind for `scripts/profile`),
//! which gets more time to start and, on stop, to exit after SIGTERM (`--stop-grace-ms`).

use std::fs;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::procstat::{self, Sample};
use crate::util::{self, mono_ns, Victim};

/// Process group of the running Herald, for the signal handler.
static HERALD_PGID: AtomicI32 = AtomicI32::new(0);

/// SIGINT/SIGTERM handler: kill Herald's process group, then leave.
extern "C" fn on_signal(_sig: libc::c_int) {
    let pg = HERALD_PGID.load(Ordering::SeqCst);
    if pg > 0 {
        // SAFETY: kill(2) is async-signal-safe; `pg` is a process group we created.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
    }
    // SAFETY: _exit(2) is async-signal-safe.
    unsafe { libc::_exit(130) };
}

/// Installs the SIGINT/SIGTERM handler (client processes die with us through their pipes).
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Three distinct free ports on 127.0.0.1 (held open together so that they differ).
pub fn free_ports() -> Result<[u16; 3], String> {
    let ls: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("free port: {e}"))?;
    let mut ports = [0u16; 3];
    for (p, l) in ports.iter_mut().zip(&ls) {
        *p = l
            .local_addr()
            .map_err(|e| format!("free port: {e}"))?
            .port();
    }
    Ok(ports)
}

/// How to launch Herald beyond its own options.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// A command and its arguments that Herald runs under (empty: run it directly).
    pub wrap: Vec<String>,
    /// Milliseconds between SIGTERM and SIGKILL on stop.
    pub stop_grace_ms: u64,
    /// More `--set KEY=VALUE` settings (a cluster node's `cluster` and `node_id`).
    pub sets: Vec<String>,
}

/// A running Herald.
pub struct Herald {
    /// The master process.
    child: Child,
    /// Its process group on the kill list.
    victim: Victim,
    /// WebSocket port address.
    pub ws: SocketAddrV4,
    /// Text push port address.
    pub text: SocketAddrV4,
    /// HTTP port address (the JSON API's figures).
    pub http: SocketAddrV4,
    /// Its temporary directory (pid file, log).
    dir: PathBuf,
    /// Set once stopped.
    stopped: bool,
    /// Milliseconds between SIGTERM and SIGKILL on stop.
    stop_grace_ms: u64,
}

impl Herald {
    /// Starts `bin` with `workers` workers and waits until it serves (at most 20 s, or 180 s
    /// under a wrapper).
    pub fn start(bin: &Path, workers: usize, launch: &Launch) -> Result<Self, String> {
        if !bin.exists() {
            return Err(format!(
                "herald binary {} not found (build it with `cargo build --release -p herald` \
                 or pass --herald PATH)",
                bin.display()
            ));
        }
        let [pw, pt, ph] = free_ports()?;
        let dir =
            std::env::temp_dir().join(format!("herald-bench-{}-{}", std::process::id(), mono_ns()));
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = fs::File::create(dir.join("herald.log"))
            .map_err(|e| format!("create herald.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("herald.log: {e}"))?;
        let ws = SocketAddrV4::new([127, 0, 0, 1].into(), pw);
        let text = SocketAddrV4::new([127, 0, 0, 1].into(), pt);
        let http = SocketAddrV4::new([127, 0, 0, 1].into(), ph);
        let mut cmd = match launch.wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("start")
            .args(["--workers", &workers.to_string()])
            .args(["--ws", &ws.to_string()])
            .args(["--text", &text.to_string()])
            .args(["--http", &http.to_string()])
            .args(["--socketio", "off"])
            .arg("--pid-file")
            .arg(dir.join("herald.pid"))
            .args(["--set", "login_reply=true"])
            .args(launch.sets.iter().flat_map(|s| ["--set", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe, between fork and
        // exec; it makes the master die if this process dies without cleaning up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let victim = Victim {
            pid: child.id() as i32,
            group: true,
        };
        util::register_victim(victim);
        HERALD_PGID.store(victim.pid, Ordering::SeqCst);
        let mut h = Herald {
            child,
            victim,
            ws,
            text,
            http,
            dir,
            stopped: false,
            stop_grace_ms: launch.stop_grace_ms,
        };
        let ready_s = if launch.wrap.is_empty() { 20 } else { 180 };
        h.wait_ready(workers, ready_s)?;
        Ok(h)
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.victim.pid
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("herald.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until both ports accept and `workers` worker processes exist (at most `secs`).
    fn wait_ready(&mut self, workers: usize, secs: u64) -> Result<(), String> {
        let until = mono_ns() + secs * 1_000_000_000;
        let mut ports_ok_at = None;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "herald exited during start-up ({st}); log:\n{}",
                    self.log_tail()
                ));
            }
            let up = [self.ws, self.text].iter().all(|a| {
                TcpStream::connect_timeout(&(*a).into(), Duration::from_millis(200)).is_ok()
            });
            if up {
                let at = *ports_ok_at.get_or_insert_with(mono_ns);
                let tree = procstat::process_tree(self.pid()).len();
                if tree > workers || (workers <= 1 && tree >= 1) {
                    break;
                }
                if mono_ns() - at > 5_000_000_000 {
                    util::progress(&format!(
                        "warning: herald has {tree} processes, expected 1 + {workers} workers"
                    ));
                    break;
                }
            }
            if mono_ns() > until {
                return Err(format!(
                    "herald did not open its ports within {secs} s; log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the probe connections go away and the workers settle.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Memory and CPU of the master and all workers.
    pub fn sample(&self) -> Sample {
        procstat::sample_tree(self.pid())
    }

    /// Stops the server: SIGTERM to the group, SIGKILL after the grace time; removes the
    /// temporary dir.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        util::signal_victim(self.victim, libc::SIGTERM);
        let until = mono_ns() + self.stop_grace_ms * 1_000_000;
        while matches!(self.child.try_wait(), Ok(None)) && mono_ns() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        util::signal_victim(self.victim, libc::SIGKILL);
        let _ = self.child.wait();
        util::unregister_victim(self.victim);
        HERALD_PGID.store(0, Ordering::SeqCst);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` for the cluster mode: a free loopback port, no file written, killed when
/// dropped.
pub struct RedisServer {
    /// The process.
    child: Child,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one and waits (at most 10 s) until it answers `PING`.
    pub fn start() -> Result<RedisServer, String> {
        let port = free_ports()?[0];
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server (apt install redis-server): {e}"))?;
        let r = RedisServer { child, port };
        let until = mono_ns() + 10_000_000_000;
        while mono_ns() < until {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let mut buf = [0u8; 8];
                if s.write_all(b"PING\r\n").is_ok()
                    && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return Ok(r);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("redis-server on port {port} did not answer"))
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
