//! The floor server as the parent sees it: `--floor-procs P` processes of the `limit` server
//! (`limit.rs`) sharing one port with `SO_REUSEPORT`, so that more clients fit than one
//! process's open-file limit allows (20,000 here) and the kernel spreads the connections over
//! the processes as it does over Herald's workers. The first process also has the text port
//! (`limit-unicast`, and the storm's pushes) and, for `limit-storm`, the steady clients' port.
//!
//! Also the mode `limit-connect`: `connect` against the handshake floor.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::modes::Deadlines;
use crate::procstat::{self, Sample};
use crate::util::{self, mono_ns, Victim};

/// What kind of floor to start.
#[derive(Clone, Copy, Debug)]
pub struct FloorKind {
    /// Processes sharing the port.
    pub procs: usize,
    /// Clients do the WebSocket upgrade and log in (the handshake floor).
    pub ws: bool,
    /// The first process listens on a port of its own for steady clients, the only ones its
    /// text port's pushes go to.
    pub steady: bool,
    /// Milliseconds between two pings to one client (0: none; `limit-idle`).
    pub ping_ms: u64,
}

/// One server process, seen from the parent.
struct Member {
    /// The process.
    child: Child,
    /// Its command pipe.
    stdin: ChildStdin,
    /// Its answer pipe.
    stdout: BufReader<ChildStdout>,
    /// Its entry on the kill list.
    victim: Victim,
}

impl Member {
    /// Starts one `_limit-server` process with `args` and reads its hello.
    fn spawn(args: Vec<String>) -> Result<(Self, Value), String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg("_limit-server")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn limit server: {e}"))?;
        let victim = Victim {
            pid: child.id() as i32,
            group: false,
        };
        util::register_victim(victim);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("limit server without pipes".into());
        };
        let mut m = Member {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            victim,
        };
        let hello = m.read()?;
        Ok((m, hello))
    }

    /// Reads one JSON answer.
    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("limit server exited".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("limit server: {e}")),
            Err(e) => Err(format!("limit server: {e}")),
        }
    }

    /// Sends one command line.
    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("limit server: {e}"))
    }

    /// Asks it to quit, waits up to `until`, then kills it.
    fn stop(mut self, until: u64) {
        let _ = self.send("quit");
        while matches!(self.child.try_wait(), Ok(None)) && mono_ns() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        util::unregister_victim(self.victim);
    }
}

/// The running floor: its processes and ports (all on 127.0.0.1).
pub struct Floor {
    /// The processes; the first has the text and steady ports.
    members: Vec<Member>,
    /// The shared port the clients connect to.
    pub port: u16,
    /// The first process's text port.
    pub text: u16,
    /// The first process's port for steady clients (0 without `FloorKind::steady`).
    pub steady: u16,
}

impl Floor {
    /// Starts the processes: the first on a free port, the others on the same one.
    pub fn spawn(kind: FloorKind) -> Result<Self, String> {
        let procs = kind.procs.max(1);
        let (first, hello) = Member::spawn(crate::limit::server_args(
            0,
            true,
            kind.ws,
            kind.steady,
            kind.ping_ms,
        ))?;
        let port = |k: &str| hello[k].as_u64().unwrap_or(0) as u16;
        let mut floor = Floor {
            members: vec![first],
            port: port("port"),
            text: port("text"),
            steady: port("steady"),
        };
        if floor.port == 0 || floor.text == 0 {
            return Err(format!("limit server: bad hello {hello}"));
        }
        for _ in 1..procs {
            let (m, hello) = Member::spawn(crate::limit::server_args(
                floor.port,
                false,
                kind.ws,
                false,
                kind.ping_ms,
            ))?;
            if hello["port"].as_u64() != Some(u64::from(floor.port)) {
                return Err(format!("limit server: bad hello {hello}"));
            }
            floor.members.push(m);
        }
        Ok(floor)
    }

    /// The shared port, as the clients' address.
    pub fn addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), self.port)
    }

    /// The text port's address.
    pub fn text_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), self.text)
    }

    /// The steady clients' address.
    pub fn steady_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), self.steady)
    }

    /// The processes' pids (for CPU and memory figures).
    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().map(|m| m.child.id() as i32).collect()
    }

    /// CPU and memory of all the processes.
    pub fn sample(&self) -> Sample {
        procstat::sample(&self.pids())
    }

    /// Each process's answer to `count`: `accepted` (logged in, with the handshake floor),
    /// `pings` written, `ready_bytes` read from logged-in clients.
    fn ask_counts(&mut self) -> Result<Vec<Value>, String> {
        for m in &mut self.members {
            m.send("count")?;
        }
        self.members.iter_mut().map(Member::read).collect()
    }

    /// Clients each process holds (logged in, with the handshake floor).
    pub fn counts(&mut self) -> Result<Vec<u64>, String> {
        let all = self.ask_counts()?;
        Ok(all
            .iter()
            .map(|v| v["accepted"].as_u64().unwrap_or(0))
            .collect())
    }

    /// Pings written and bytes read from logged-in clients, summed over the processes.
    pub fn ping_totals(&mut self) -> Result<(u64, u64), String> {
        let all = self.ask_counts()?;
        let sum = |k: &str| all.iter().map(|v| v[k].as_u64().unwrap_or(0)).sum::<u64>();
        Ok((sum("pings"), sum("ready_bytes")))
    }

    /// Waits until `n` connections are accepted over all processes (or `deadline_ns`);
    /// returns how many were.
    pub fn wait_accepted(&mut self, n: u64, deadline_ns: u64) -> Result<u64, String> {
        loop {
            let got: u64 = self.counts()?.iter().sum();
            if got >= n || mono_ns() > deadline_ns {
                return Ok(got);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Broadcasts `data` (no newline inside): every process writes it to each of its clients.
    pub fn broadcast(&mut self, data: &str) -> Result<(), String> {
        let line = format!("b {data}");
        for m in &mut self.members {
            m.send(&line)?;
        }
        Ok(())
    }

    /// Stops every process.
    pub fn stop(self) {
        let until = mono_ns() + 2_000_000_000;
        for m in self.members {
            m.stop(until);
        }
    }
}

/// Checks that `clients` connections fit in `procs` processes' open-file limits: one process
/// takes them all, several share them as the kernel's hash of the address pairs falls (5% is
/// left for its unevenness).
pub fn check_fit(clients: usize, procs: usize) -> Result<(), String> {
    let nofile = util::raise_nofile() as usize;
    let room = nofile.saturating_sub(64).max(1);
    let share = if procs <= 1 {
        clients
    } else {
        clients.div_ceil(procs) * 21 / 20
    };
    if share > room {
        let need = (clients * 21 / 20).div_ceil(room) + 1;
        return Err(format!(
            "{clients} clients do not fit in {procs} floor process(es) with an open-file limit of \
             {nofile} each: give --floor-procs {need} or more"
        ));
    }
    Ok(())
}

/// `limit-connect`: `connect` against the handshake floor (upgrade, `101`, login frame read
/// and answered), spread over `--floor-procs` processes: the connect rate, memory per client
/// and CPU per connect of a server that does nothing else.
pub fn limit_connect(o: &Opts, d: Deadlines) -> Result<Value, String> {
    check_fit(o.clients, o.floor_procs)?;
    let mut floor = Floor::spawn(FloorKind {
        procs: o.floor_procs,
        ws: true,
        steady: false,
        ping_ms: 0,
    })?;
    let pids = floor.pids();
    let addr = floor.addr();
    let r = crate::modes::connect_against(
        o,
        d,
        "limit",
        addr,
        || procstat::sample(&pids),
        |m| {
            m.insert("accepted_per_proc".into(), json!(floor.counts()?));
            Ok(())
        },
    );
    floor.stop();
    r
}
