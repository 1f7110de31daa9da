//! `idle`: what N logged-in clients that say nothing cost the server over time: CPU as a share
//! of one core (with the default pings, or none with `--set ping_interval=0`), the pings written
//! meanwhile and the CPU each cost, memory per connection (RSS/PSS of master and workers), and
//! the kernel's TCP memory from `/proc/net/sockstat`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::modes::{base, connect_pool, start_herald_with, Deadlines};
use crate::procstat;
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

/// Runs the mode: connect, hold `--hold-ms`, then measure over `--seconds`.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let kernel0 = tcp_mem_bytes();
    let herald = start_herald_with(o, o.sets.clone())?;
    let before = herald.sample();
    let (mut pool, c) = connect_pool(o, d, herald.ws, false, o.clients)?;
    std::thread::sleep(Duration::from_millis(o.hold_ms));
    let pings0 = pool.report_sum("pings")?;
    let s0 = herald.sample();
    let t0 = mono_ns();
    let end = t0 + (o.seconds * 1e9) as u64;
    if end > d.all.saturating_sub(10_000_000_000) {
        return Err("--seconds does not fit in --deadline (leave 10 s more)".into());
    }
    while mono_ns() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let s1 = herald.sample();
    let wall = mono_ns() - t0;
    let pings = pool.report_sum("pings")?.saturating_sub(pings0);
    let kernel1 = tcp_mem_bytes();
    let closed = pool.stat_sum("closed")?;
    let mut m = base(o, "herald", &c);
    let n = c.connected.max(1) as f64;
    let cpu = s1.cpu_ns.saturating_sub(s0.cpu_ns);
    let sched = s1.sched_ns.saturating_sub(s0.sched_ns);
    m.insert("sets".into(), json!(o.sets));
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
    m.insert("clients_closed".into(), json!(closed));
    m.insert("steal_pct".into(), json!(procstat::steal_pct(&s0, &s1)));
    m.insert("server_procs".into(), json!(s1.procs));
    crate::modes::per_conn_memory(&mut m, &before, &s1, n);
    m.insert(
        "kernel_tcp_mem_per_conn".into(),
        json!(r3(kernel1.saturating_sub(kernel0) as f64 / n)),
    );
    pool.shutdown();
    drop(herald);
    Ok(Value::Object(m))
}
