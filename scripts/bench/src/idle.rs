//! `idle`: what N logged-in clients that say nothing cost the server over time: CPU as a share
//! of one core (with the default pings, or none with `--set ping_interval=0`), the pings written
//! meanwhile and the CPU each cost, memory per connection (RSS/PSS of master and workers), and
//! the kernel's TCP memory from `/proc/net/sockstat`.
//!
//! Also `limit-idle`: the same clients held against the handshake floor (`floor.rs`), whose
//! processes write a pre-encoded ping to each socket every `--ping-interval` seconds and read
//! and drop the pongs: the CPU that idle connections and their pings cost a server that does
//! nothing else, to set beside `idle`'s in the same sitting.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::args::Opts;
use crate::clients::{ClientPool, ConnectOutcome};
use crate::floor::{self, Floor, FloorKind};
use crate::modes::{base, connect_pool, start_herald_with, Deadlines};
use crate::procstat::{self, Sample};
use crate::util::{mono_ns, r3};

/// The kernel's TCP socket memory in bytes (`mem`, counted in pages, on the `TCP:` line).
pub fn tcp_mem_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|w| *w == "mem")
                .and_then(|i| f.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// Runs `idle`: start Herald, connect, then [`measure`].
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let kernel0 = tcp_mem_bytes();
    let herald = start_herald_with(o, o.sets.clone())?;
    let before = herald.sample();
    let (mut pool, c) = connect_pool(o, d, herald.ws, false, o.clients)?;
    let r = measure(
        o,
        d,
        &mut pool,
        &c,
        Server::Herald,
        kernel0,
        &before,
        || herald.sample(),
    );
    pool.shutdown();
    drop(herald);
    let mut m = r?;
    m.insert("sets".into(), json!(o.sets));
    Ok(Value::Object(m))
}

/// Runs `limit-idle`: start the handshake floor pinging every `--ping-interval` seconds,
/// connect, then [`measure`].
pub fn run_floor(o: &Opts, d: Deadlines) -> Result<Value, String> {
    floor::check_fit(o.clients, o.floor_procs)?;
    let kernel0 = tcp_mem_bytes();
    let mut fl = Floor::spawn(FloorKind {
        procs: o.floor_procs,
        ws: true,
        steady: false,
        ping_ms: (o.ping_interval * 1000.0).round() as u64,
    })?;
    let pids = fl.pids();
    let before = fl.sample();
    let r = match connect_pool(o, d, fl.addr(), false, o.clients) {
        Ok((mut pool, c)) => {
            let sample = || procstat::sample(&pids);
            let r = measure(
                o,
                d,
                &mut pool,
                &c,
                Server::Floor(&mut fl),
                kernel0,
                &before,
                sample,
            );
            pool.shutdown();
            r
        }
        Err(e) => Err(e),
    };
    fl.stop();
    let mut m = r?;
    m.insert("ping_interval".into(), json!(o.ping_interval));
    Ok(Value::Object(m))
}

/// The server being measured.
enum Server<'a> {
    /// Herald: the pings are counted by the clients.
    Herald,
    /// The floor: it also counts the pings it wrote and the bytes (pongs) it read.
    Floor(&'a mut Floor),
}

/// Holds the connected clients idle `--hold-ms`, then measures over `--seconds`: the server's
/// CPU (read by `sample`) as a share of one core, the pings and the CPU per ping, steal, memory
/// per client (against `before`) and the kernel's TCP memory (against `kernel0`).
#[allow(clippy::too_many_arguments)]
fn measure(
    o: &Opts,
    d: Deadlines,
    pool: &mut ClientPool,
    c: &ConnectOutcome,
    mut server: Server<'_>,
    kernel0: u64,
    before: &Sample,
    sample: impl Fn() -> Sample,
) -> Result<Map<String, Value>, String> {
    std::thread::sleep(Duration::from_millis(o.hold_ms));
    let pings0 = pool.report_sum("pings")?;
    let floor0 = match &mut server {
        Server::Floor(f) => f.ping_totals()?,
        Server::Herald => (0, 0),
    };
    let s0 = sample();
    let t0 = mono_ns();
    let end = t0 + (o.seconds * 1e9) as u64;
    if end > d.all.saturating_sub(10_000_000_000) {
        return Err("--seconds does not fit in --deadline (leave 10 s more)".into());
    }
    while mono_ns() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let s1 = sample();
    let wall = mono_ns() - t0;
    let floor1 = match &mut server {
        Server::Floor(f) => Some(f.ping_totals()?),
        Server::Herald => None,
    };
    let pings = pool.report_sum("pings")?.saturating_sub(pings0);
    let kernel1 = tcp_mem_bytes();
    let closed = pool.stat_sum("closed")?;
    let name = match server {
        Server::Herald => "herald",
        Server::Floor(_) => "limit",
    };
    let mut m = base(o, name, c);
    let n = c.connected.max(1) as f64;
    let cpu = s1.cpu_ns.saturating_sub(s0.cpu_ns);
    let sched = s1.sched_ns.saturating_sub(s0.sched_ns);
    m.insert("seconds".into(), json!(r3(wall as f64 / 1e9)));
    m.insert(
        "idle_cpu_pct_of_core".into(),
        json!(r3(cpu as f64 * 100.0 / wall as f64)),
    );
    m.insert(
        "idle_sched_pct_of_core".into(),
        json!(r3(sched as f64 * 100.0 / wall as f64)),
    );
    m.insert("pings_answered".into(), json!(pings));
    m.insert(
        "pings_per_s".into(),
        json!(r3(pings as f64 * 1e9 / wall as f64)),
    );
    if pings > 0 {
        m.insert(
            "sched_us_per_ping".into(),
            json!(r3(sched as f64 / 1e3 / pings as f64)),
        );
    }
    if let Some((written, bytes)) = floor1 {
        let written = written.saturating_sub(floor0.0);
        let bytes = bytes.saturating_sub(floor0.1);
        m.insert("pings_written".into(), json!(written));
        m.insert("pong_bytes_read".into(), json!(bytes));
        // A client's pong to an empty ping is 6 bytes: 0x8A, 0x80 and the 4-byte mask.
        m.insert("pongs_read".into(), json!(bytes / 6));
    }
    m.insert("clients_closed".into(), json!(closed));
    m.insert("steal_pct".into(), json!(procstat::steal_pct(&s0, &s1)));
    m.insert("server_procs".into(), json!(s1.procs));
    crate::modes::per_conn_memory(&mut m, before, &s1, n);
    m.insert(
        "kernel_tcp_mem_per_conn".into(),
        json!(r3(kernel1.saturating_sub(kernel0) as f64 / n)),
    );
    Ok(m)
}
