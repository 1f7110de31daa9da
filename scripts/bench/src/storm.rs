//! `storm`: every client dropped at once and connecting again, while pushes go on to a steady
//! set of other clients. N clients (uids `u{K}`…) close their connections together (what a
//! network cut looks like from the clients), and reconnect at once, each process keeping
//! `--inflight` handshakes in flight; K steady clients (`u0`…`u{K-1}`, `--steady`) receive
//! unicast pushes at `--rate` all along. Reports the time until every client is back, failed
//! reconnects, the steady pushes' latency (p50/p99/max) and losses during the storm, and the
//! kernel's `ListenOverflows`/`ListenDrops` before and after (an overflowing accept queue), and
//! the CPU that the server and the dropped clients' processes (the load tool itself) spent from
//! the drop until all were back.
//!
//! `limit-storm` runs the same against the handshake floor (`floor.rs`, `--floor-procs`): the
//! dropping clients on its shared port, the steady ones on the first process's own port, the
//! pushes through its text port (each line written to one steady client).

use std::net::SocketAddrV4;
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::clients::ClientPool;
use crate::floor::{self, Floor, FloorKind};
use crate::modes::{base, connect_pool_of, start_herald_with, unicast_run, Deadlines};
use crate::procstat::{self, Sample};
use crate::util::{self, mono_ns, r3};

/// `ListenOverflows` and `ListenDrops` from the `TcpExt` lines of `/proc/net/netstat`.
pub fn listen_overflows() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let pairs: Vec<(&str, u64)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .map(|(n, v)| (n, v.parse().unwrap_or(0)))
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map_or(0, |p| p.1);
    (get("ListenOverflows"), get("ListenDrops"))
}

/// Live (logged-in) clients of a pool, summed over its processes.
fn live(pool: &mut ClientPool) -> Result<u64, String> {
    pool.stat_sum("live")
}

/// The server a storm runs against.
struct Target<'a> {
    /// `herald` or `limit`, for the result.
    name: &'static str,
    /// Where the steady clients connect.
    steady_ws: SocketAddrV4,
    /// Where the dropping clients connect.
    storm_ws: SocketAddrV4,
    /// The text port the pushes go through.
    text: SocketAddrV4,
    /// The server's processes (for its CPU during the storm).
    pids: Vec<i32>,
    /// Reads the server's CPU for the pushes' figures.
    sample: &'a dyn Fn() -> Sample,
}

/// Runs `storm` against Herald.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let herald = start_herald_with(o, o.sets.clone())?;
    let sample = || herald.sample();
    let r = run_against(
        o,
        d,
        &Target {
            name: "herald",
            steady_ws: herald.ws,
            storm_ws: herald.ws,
            text: herald.text,
            pids: procstat::process_tree(herald.pid()),
            sample: &sample,
        },
    );
    drop(herald);
    r
}

/// Runs `limit-storm`: the storm against the handshake floor.
pub fn run_floor(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let steady = o.steady.max(1);
    floor::check_fit(o.clients + steady, o.floor_procs)?;
    let floor = Floor::spawn(FloorKind {
        procs: o.floor_procs,
        ws: true,
        steady: true,
        ping_ms: 0,
    })?;
    let pids = floor.pids();
    let sample = || procstat::sample(&pids);
    let r = run_against(
        o,
        d,
        &Target {
            name: "limit",
            steady_ws: floor.steady_addr(),
            storm_ws: floor.addr(),
            text: floor.text_addr(),
            pids: pids.clone(),
            sample: &sample,
        },
    );
    floor.stop();
    let mut v = r?;
    // The floor writes each push to a steady client of its choosing.
    if let Value::Object(m) = &mut v {
        m.remove("misrouted");
    }
    Ok(v)
}

/// Seconds of schedstat CPU time between two samples.
fn cpu_s(a: &Sample, b: &Sample) -> f64 {
    r3(b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1e9)
}

/// Microseconds of schedstat CPU time between two samples per one of `n`.
fn per(a: &Sample, b: &Sample, n: u64) -> f64 {
    r3(b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1e3 / n.max(1) as f64)
}

/// The storm against `t`.
fn run_against(o: &Opts, d: Deadlines, t: &Target) -> Result<Value, String> {
    let steady = o.steady.max(1);
    let mut so = o.clone();
    so.clients = steady;
    let (mut steady_pool, sc) = connect_pool_of(o, d, t.steady_ws, false, steady, 0, steady)?;
    let (mut pool, c) = connect_pool_of(o, d, t.storm_ws, false, o.clients, steady, o.clients)?;
    let (over0, drops0) = listen_overflows();
    let n = c.connected;
    let settle = d.before_end(20_000_000_000);
    let server_pids = t.pids.clone();
    let storm = std::thread::spawn(move || -> Result<(ClientPool, Value), String> {
        // Pushes run a second before the drop.
        std::thread::sleep(Duration::from_secs(1));
        let client_pids = pool.pids();
        let (c0, s0) = (
            procstat::sample(&client_pids),
            procstat::sample(&server_pids),
        );
        let t0 = mono_ns();
        let dropped: u64 = pool
            .ask("drop")?
            .iter()
            .map(|a| a["dropped"].as_u64().unwrap_or(0))
            .sum();
        util::progress(&format!("dropped {dropped} clients; reconnecting"));
        pool.ask("reopen")?;
        let mut back = live(&mut pool)?;
        while back < n && mono_ns() < settle {
            std::thread::sleep(Duration::from_millis(20));
            back = live(&mut pool)?;
        }
        let secs = (mono_ns() - t0) as f64 / 1e9;
        let (c1, s1) = (
            procstat::sample(&client_pids),
            procstat::sample(&server_pids),
        );
        let failed = pool.stat_sum("failed")?;
        util::progress(&format!("{back} of {n} back in {secs:.2} s"));
        Ok((
            pool,
            json!({"dropped": dropped, "back": back, "reconnect_s": r3(secs),
                   "failed_total": failed,
                   "storm_server_cpu_s": cpu_s(&s0, &s1),
                   "storm_client_cpu_s": cpu_s(&c0, &c1),
                   "storm_server_cpu_us_per_reconnect": per(&s0, &s1, back),
                   "storm_client_cpu_us_per_reconnect": per(&c0, &c1, back),
                   "storm_steal_pct": procstat::steal_pct(&s0, &s1)}),
        ))
    });
    let mut m = base(o, t.name, &c);
    m.insert("steady".into(), json!(sc.connected));
    let pushed = unicast_run(&so, d, &mut steady_pool, t.text, &mut m, t.sample);
    let (pool, figures) = storm
        .join()
        .map_err(|_| "storm thread panicked".to_string())??;
    pushed?;
    let (over1, drops1) = listen_overflows();
    if let Value::Object(f) = figures {
        m.extend(f);
    }
    m.insert(
        "listen_overflows".into(),
        json!(over1.saturating_sub(over0)),
    );
    m.insert("listen_drops".into(), json!(drops1.saturating_sub(drops0)));
    pool.shutdown();
    steady_pool.shutdown();
    Ok(Value::Object(m))
}
