//! `storm`: every client dropped at once and connecting again, while pushes go on to a steady
//! set of other clients. N clients (uids `u{K}`…) close their connections together (what a
//! network cut looks like from the clients), and reconnect at once, each process keeping
//! `--inflight` handshakes in flight; K steady clients (`u0`…`u{K-1}`, `--steady`) receive
//! unicast pushes at `--rate` all along. Reports the time until every client is back, failed
//! reconnects, the steady pushes' latency (p50/p99/max) and losses during the storm, and the
//! kernel's `ListenOverflows`/`ListenDrops` before and after (an overflowing accept queue).

use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::clients::ClientPool;
use crate::modes::{base, connect_pool_of, start_herald_with, unicast_run, Deadlines};
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

/// Runs the mode.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let herald = start_herald_with(o, o.sets.clone())?;
    let steady = o.steady.max(1);
    let mut so = o.clone();
    so.clients = steady;
    let (mut steady_pool, sc) = connect_pool_of(o, d, herald.ws, false, steady, 0, steady)?;
    let (mut pool, c) = connect_pool_of(o, d, herald.ws, false, o.clients, steady, o.clients)?;
    let (over0, drops0) = listen_overflows();
    let n = c.connected;
    let settle = d.before_end(20_000_000_000);
    let storm = std::thread::spawn(move || -> Result<(ClientPool, Value), String> {
        // Pushes run a second before the drop.
        std::thread::sleep(Duration::from_secs(1));
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
        let failed = pool.stat_sum("failed")?;
        util::progress(&format!("{back} of {n} back in {secs:.2} s"));
        Ok((
            pool,
            json!({"dropped": dropped, "back": back, "reconnect_s": r3(secs), "failed_total": failed}),
        ))
    });
    let mut m = base(o, "herald", &c);
    m.insert("steady".into(), json!(sc.connected));
    let pushed = unicast_run(&so, d, &mut steady_pool, herald.text, &mut m, || {
        herald.sample()
    });
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
    drop(herald);
    Ok(Value::Object(m))
}
