//! `cluster-broadcast`: N clients spread evenly over three Herald nodes (of `--workers` workers
//! each) on one `redis-server` started for the run, and B broadcasts entering node A's text
//! port. Reports what `broadcast` reports (deliveries/s, completion time per broadcast from the
//! line to the last client, server CPU per delivery summed over the three nodes and Redis) and
//! Redis's own CPU per broadcast.

use serde_json::{json, Value};
use std::time::Duration;

use crate::args::Opts;
use crate::clients::ClientPool;
use crate::modes::{base, broadcast_figures, connect_pool_of, start_herald_with, Deadlines};
use crate::procstat;
use crate::push;
use crate::server::{Herald, RedisServer};
use crate::util::{self, r3};

/// Nodes in the run.
const NODES: usize = 3;

/// Runs the mode.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let redis = RedisServer::start()?;
    let mut nodes: Vec<Herald> = Vec::new();
    for i in 0..NODES {
        let mut sets = o.sets.clone();
        sets.push(format!("cluster=\"redis://127.0.0.1:{}/0\"", redis.port));
        sets.push(format!("node_id=bench-{i}"));
        nodes.push(start_herald_with(o, sets)?);
    }
    let mut pools: Vec<ClientPool> = Vec::new();
    let mut connected = 0u64;
    let mut outcome = None;
    for (i, node) in nodes.iter().enumerate() {
        let share = o.clients / NODES + usize::from(i < o.clients % NODES);
        let first = (0..i)
            .map(|j| o.clients / NODES + usize::from(j < o.clients % NODES))
            .sum();
        let (pool, c) = connect_pool_of(o, d, node.ws, false, share, first, share)?;
        connected += c.connected;
        pools.push(pool);
        outcome.get_or_insert(c);
    }
    // Every node's logins are in Redis once a push from A to the last uid of each answers ok.
    for i in 1..NODES {
        let last: usize = (0..=i)
            .map(|j| o.clients / NODES + usize::from(j < o.clients % NODES))
            .sum::<usize>()
            - 1;
        push::wait_ok(
            nodes[0].text,
            &format!("u{last}"),
            d.before_end(30_000_000_000),
        )?;
    }
    let Some(mut c) = outcome else {
        return Err("no node".into());
    };
    c.connected = connected;
    let mut m = base(o, "herald-cluster", &c);
    m.insert("nodes".into(), json!(NODES));
    let all: Vec<i32> = nodes
        .iter()
        .flat_map(|h| procstat::process_tree(h.pid()))
        .chain([redis.pid()])
        .collect();
    for p in pools.iter_mut() {
        p.ask("reset")?;
    }
    let r0 = procstat::sample(&[redis.pid()]);
    let s0 = procstat::sample(&all);
    util::progress(&format!(
        "{} broadcasts into node 0, {} ms apart, to {connected} clients on {NODES} nodes",
        o.count, o.spacing_ms
    ));
    let (sent, ok) = push::broadcasts(nodes[0].text, o.count, Duration::from_millis(o.spacing_ms))?;
    let mut got = 0;
    for p in pools.iter_mut() {
        let expect = p.stat_sum("connected")? * o.count as u64;
        got += p.wait_for(
            "bc",
            expect,
            Duration::from_millis(o.settle_ms),
            d.before_end(5_000_000_000),
        )?;
    }
    let s1 = procstat::sample(&all);
    let r1 = procstat::sample(&[redis.pid()]);
    util::progress(&format!("{ok} ok answers, {got} deliveries"));
    let mut reports = Vec::new();
    for p in pools.iter_mut() {
        reports.extend(p.ask("report")?);
    }
    m.insert("count".into(), json!(o.count));
    m.insert("spacing_ms".into(), json!(o.spacing_ms));
    m.insert("ok".into(), json!(ok));
    broadcast_figures(&mut m, &reports, &sent, connected, &s0, &s1);
    m.insert(
        "redis_cpu_us_per_broadcast".into(),
        json!(r3(r1.cpu_ns.saturating_sub(r0.cpu_ns) as f64
            / 1e3
            / o.count.max(1) as f64)),
    );
    for p in pools {
        p.shutdown();
    }
    drop(nodes);
    drop(redis);
    Ok(Value::Object(m))
}
