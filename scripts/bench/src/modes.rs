//! The public modes: each starts its server (Herald, or the `limit` server), connects the client
//! processes, measures, and returns the one JSON object the run prints. `churn` lives in
//! `churn.rs`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::args::Opts;
use crate::clients::{ClientPool, ConnectOutcome, PoolConfig};
use crate::floor::{self, Floor, FloorKind};
use crate::procstat::{self, Sample};
use crate::push;
use crate::server::{Herald, Launch};
use crate::util::{self, mono_ns, quantile, r3};

/// Time limits of one run, as monotonic nanoseconds.
#[derive(Clone, Copy)]
pub struct Deadlines {
    /// Everything must be over by then (the watchdog kills at this time).
    pub all: u64,
    /// Clients not logged in by then count as failed.
    pub connect: u64,
}

impl Deadlines {
    /// A time `margin_ns` before the end, or a quarter of the time left, whichever is later:
    /// what remains after it is for collecting the results.
    pub(crate) fn before_end(&self, margin_ns: u64) -> u64 {
        let left = self.all.saturating_sub(mono_ns());
        self.all - margin_ns.min(left / 4)
    }
}

/// Runs the mode named in `o.mode`.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    match o.mode.as_str() {
        "connect" => connect(o, d),
        "unicast" => unicast(o, d),
        "broadcast" => broadcast(o, d),
        "limit" => limit(o, d),
        "limit-unicast" => limit_unicast(o, d),
        "limit-connect" => floor::limit_connect(o, d),
        "limit-storm" => crate::storm::run_floor(o, d),
        "churn" => crate::churn::run(o, d),
        "cluster-unicast" => cluster_unicast(o, d),
        "upstream" => crate::upstream::run(o, d),
        "idle" => crate::idle::run(o, d),
        "limit-idle" => crate::idle::run_floor(o, d),
        "storm" => crate::storm::run(o, d),
        "cluster-broadcast" => crate::cluster_bc::run(o, d),
        "recover" => crate::recover::run(o, d),
        m => Err(format!("unknown mode {m}")),
    }
}

/// The Herald binary: `--herald`, else `target/release/herald` under the current directory, else
/// next to this binary, else in the workspace this tool was built from.
fn herald_path(o: &Opts) -> PathBuf {
    if let Some(p) = &o.herald {
        return p.clone();
    }
    let mut candidates = vec![PathBuf::from("target/release/herald")];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.to_path_buf()))
    {
        candidates.push(dir.join("herald"));
    }
    candidates.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/release/herald"
    )));
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

/// Starts Herald as the options say (binary, workers, wrapper, stop grace).
pub(crate) fn start_herald(o: &Opts) -> Result<Herald, String> {
    start_herald_with(o, o.sets.clone())
}

/// [`start_herald`] with more `--set KEY=VALUE` settings.
pub(crate) fn start_herald_with(o: &Opts, mut sets: Vec<String>) -> Result<Herald, String> {
    if o.tls {
        sets.extend(crate::tls::server_sets()?);
    }
    Herald::start(
        &herald_path(o),
        o.workers,
        &Launch {
            wrap: o.server_wrap.clone(),
            stop_grace_ms: o.stop_grace_ms,
            sets,
        },
    )
}

/// Client processes to use: `--procs`, else ceil(N/15000)+1.
pub(crate) fn procs(o: &Opts) -> usize {
    o.procs.unwrap_or(o.clients.div_ceil(15_000) + 1).max(1)
}

/// Spawns the client processes for `ws` and logs every client in; `total_connects` is how many
/// connections the whole run will open (it spreads them over source addresses).
pub(crate) fn connect_pool(
    o: &Opts,
    d: Deadlines,
    ws: std::net::SocketAddrV4,
    raw: bool,
    total_connects: usize,
) -> Result<(ClientPool, ConnectOutcome), String> {
    connect_pool_of(o, d, ws, raw, total_connects, 0, o.clients)
}

/// [`connect_pool`] for `clients` clients numbered from `uid_base`.
pub(crate) fn connect_pool_of(
    o: &Opts,
    d: Deadlines,
    ws: std::net::SocketAddrV4,
    raw: bool,
    total_connects: usize,
    uid_base: usize,
    clients: usize,
) -> Result<(ClientPool, ConnectOutcome), String> {
    let mut pool = ClientPool::spawn(&PoolConfig {
        ws,
        clients,
        uid_base,
        procs: o.procs.unwrap_or(clients.div_ceil(15_000) + 1).max(1),
        per_addr: o.per_addr,
        inflight: o.inflight,
        raw,
        ca: (o.tls && !raw).then(|| crate::tls::dir().join("ca.pem")),
        connect_deadline_ns: d.connect,
        total_connects,
    })?;
    util::progress(&format!("connecting {clients} clients"));
    let c = pool.connect()?;
    util::progress(&format!(
        "{} connected, {} failed in {:.2} s",
        c.connected,
        c.failed,
        c.elapsed_ns as f64 / 1e9
    ));
    for e in c.errors.iter().take(5) {
        util::progress(&format!("  client error: {e}"));
    }
    if c.connected == 0 {
        return Err(format!(
            "no client could connect and log in; first errors: {:?}",
            c.errors.iter().take(3).collect::<Vec<_>>()
        ));
    }
    Ok((pool, c))
}

/// The fields every result carries.
pub(crate) fn base(o: &Opts, server: &str, c: &ConnectOutcome) -> Map<String, Value> {
    let secs = c.elapsed_ns as f64 / 1e9;
    let mut m = Map::new();
    m.insert("mode".into(), json!(o.mode));
    m.insert("server".into(), json!(server));
    m.insert("clients".into(), json!(o.clients));
    if server == "herald" {
        m.insert("workers".into(), json!(o.workers));
    }
    if server == "limit" {
        m.insert("floor_procs".into(), json!(o.floor_procs));
    }
    m.insert("client_procs".into(), json!(procs(o)));
    m.insert("connected".into(), json!(c.connected));
    m.insert("failed_connects".into(), json!(c.failed));
    m.insert("connect_s".into(), json!(r3(secs)));
    m.insert(
        "connects_per_s".into(),
        json!(util::per_s(c.connected, secs)),
    );
    m.insert(
        "client_cpu_connect_s".into(),
        json!(r3(c.client_cpu_ns as f64 / 1e9)),
    );
    m
}

/// CPU of the server between two samples, in microseconds per `unit` (two figures: utime+stime
/// from `/proc/PID/stat`, and the finer schedstat run time).
pub(crate) fn cpu_per(s0: &Sample, s1: &Sample, units: u64) -> (f64, f64) {
    if units == 0 {
        return (0.0, 0.0);
    }
    let per = |a: u64, b: u64| r3(b.saturating_sub(a) as f64 / 1e3 / units as f64);
    (per(s0.cpu_ns, s1.cpu_ns), per(s0.sched_ns, s1.sched_ns))
}

/// `rss_per_conn` and `pss_per_conn`: what the server grew by between two samples, per client.
pub(crate) fn per_conn_memory(m: &mut Map<String, Value>, before: &Sample, after: &Sample, n: f64) {
    m.insert(
        "rss_per_conn".into(),
        json!(r3((after.rss as f64 - before.rss as f64) / n)),
    );
    m.insert(
        "pss_per_conn".into(),
        json!(r3((after.pss as f64 - before.pss as f64) / n)),
    );
}

/// `connect`: memory per idle logged-in client.
fn connect(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let herald = start_herald(o)?;
    let v = connect_against(o, d, "herald", herald.ws, || herald.sample(), |_| Ok(()));
    drop(herald);
    v
}

/// Connects `o.clients` WebSocket clients to `ws` (`server` names it in the result), holds
/// them idle, and reports the connect rate and the memory and CPU the server (read by
/// `sample`) spent on them; `more` adds figures while the clients are still connected.
pub(crate) fn connect_against(
    o: &Opts,
    d: Deadlines,
    server: &str,
    ws: std::net::SocketAddrV4,
    sample: impl Fn() -> Sample,
    more: impl FnOnce(&mut Map<String, Value>) -> Result<(), String>,
) -> Result<Value, String> {
    let before = sample();
    let (mut pool, c) = connect_pool(o, d, ws, false, o.clients)?;
    // Hold the clients idle (and let the server finish what the logins started) first.
    std::thread::sleep(Duration::from_millis(o.hold_ms));
    let after = sample();
    let mut m = base(o, server, &c);
    m.insert("hold_ms".into(), json!(o.hold_ms));
    m.insert("clients_closed".into(), json!(pool.stat_sum("closed")?));
    let n = c.connected.max(1) as f64;
    m.insert("server_procs".into(), json!(after.procs));
    m.insert("rss_before".into(), json!(before.rss));
    m.insert("rss_after".into(), json!(after.rss));
    m.insert("pss_before".into(), json!(before.pss));
    m.insert("pss_after".into(), json!(after.pss));
    per_conn_memory(&mut m, &before, &after, n);
    m.insert(
        "server_cpu_connect_us_per_conn".into(),
        json!(cpu_per(&before, &after, c.connected).1),
    );
    m.insert(
        "client_cpu_us_per_conn".into(),
        json!(r3(c.client_cpu_ns as f64 / 1e3 / n)),
    );
    m.insert(
        "steal_pct".into(),
        json!(procstat::steal_pct(&before, &after)),
    );
    let added = more(&mut m);
    pool.shutdown();
    added?;
    Ok(Value::Object(m))
}

/// `unicast`: pushes to random uids through pipelined text connections.
fn unicast(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let herald = start_herald(o)?;
    let (mut pool, c) = connect_pool(o, d, herald.ws, false, o.clients)?;
    let mut m = base(o, "herald", &c);
    unicast_run(o, d, &mut pool, herald.text, &mut m, || herald.sample())?;
    pool.shutdown();
    drop(herald);
    Ok(Value::Object(m))
}

/// `cluster-unicast`: the clients on node B, the pushes into node A's text port, both nodes
/// (of `--workers` workers each) on one `redis-server` this run starts. CPU is the sum of both
/// nodes and Redis; Redis's own share is reported apart.
fn cluster_unicast(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let redis = crate::server::RedisServer::start()?;
    let node = |name: &str| {
        start_herald_with(
            o,
            vec![
                format!("cluster=\"redis://127.0.0.1:{}/0\"", redis.port),
                format!("node_id={name}"),
            ],
        )
    };
    let a = node("bench-a")?;
    let b = node("bench-b")?;
    let (mut pool, c) = connect_pool(o, d, b.ws, false, o.clients)?;
    // Every login is in Redis once a push from A to the last uid answers ok.
    push::wait_ok(
        a.text,
        &format!("u{}", o.clients - 1),
        d.before_end(30_000_000_000),
    )?;
    let mut m = base(o, "herald-cluster", &c);
    let pids = |h: &Herald| procstat::process_tree(h.pid());
    let all: Vec<i32> = pids(&a)
        .into_iter()
        .chain(pids(&b))
        .chain([redis.pid()])
        .collect();
    let r0 = procstat::sample(&[redis.pid()]);
    unicast_run(o, d, &mut pool, a.text, &mut m, || procstat::sample(&all))?;
    let r1 = procstat::sample(&[redis.pid()]);
    let pushes = m.get("pushes").and_then(Value::as_u64).unwrap_or(0);
    m.insert(
        "redis_cpu_us_per_push".into(),
        json!(cpu_per(&r0, &r1, pushes).0),
    );
    pool.shutdown();
    drop(a);
    drop(b);
    drop(redis);
    Ok(Value::Object(m))
}

/// `limit-unicast`: the same pushes through the trivial server's text port (one `write` per
/// push, no parsing, no registry): the floor of a unicast push on this machine.
fn limit_unicast(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let (floor, mut pool, c) = limit_pool(o, d)?;
    let mut m = base(o, "limit", &c);
    let pids = floor.pids();
    let text = floor.text_addr();
    let run = unicast_run(o, d, &mut pool, text, &mut m, || procstat::sample(&pids));
    pool.shutdown();
    floor.stop();
    run?;
    // The floor writes each push to an arbitrary client: "misrouted" means nothing here.
    m.remove("misrouted");
    Ok(Value::Object(m))
}

/// Pushes `o.pushes` lines through `text` while `pool`'s clients receive them, and adds the
/// unicast figures to `m`; `sample` reads the server's CPU.
pub(crate) fn unicast_run(
    o: &Opts,
    d: Deadlines,
    pool: &mut ClientPool,
    text: std::net::SocketAddrV4,
    m: &mut Map<String, Value>,
    sample: impl Fn() -> Sample,
) -> Result<(), String> {
    pool.ask("reset")?;
    let s0 = sample();
    util::progress(&format!(
        "pushing {} through {} connections {}",
        o.pushes,
        o.conns,
        o.rate
            .map(|r| format!("at {r}/s"))
            .unwrap_or_else(|| "flat out".into())
    ));
    let asker = match &o.query {
        Some(q) => Some(crate::query::Asker::start(text, q, o.query_every_ms)?),
        None => None,
    };
    let out = push::unicast(&push::UnicastPlan {
        text,
        conns: o.conns,
        rate: o.rate,
        pushes: o.pushes,
        clients: o.clients as u64,
        window: o.window,
        seed: o.seed,
        deadline_ns: d.before_end(10_000_000_000),
    })?;
    if let (Some(a), Some(q)) = (asker, &o.query) {
        a.finish(q, m)?;
    }
    let delivered = pool.wait_for(
        "uni",
        out.ok_t.len() as u64,
        Duration::from_millis(o.settle_ms),
        d.before_end(5_000_000_000),
    )?;
    let s1 = sample();
    util::progress(&format!(
        "{} sent, {} ok, {} fail, {} delivered",
        out.sent,
        out.ok_t.len(),
        out.fail,
        delivered
    ));
    let reports = pool.ask("report")?;
    let mut lat = Vec::with_capacity(delivered as usize);
    let mut seen = HashSet::with_capacity(delivered as usize);
    let mut misrouted = 0;
    let mut other = 0;
    let mut closed = 0;
    for r in &reports {
        let ts = r["uni_t"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let rs = r["uni_r"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for (t, rcv) in ts.iter().zip(rs) {
            let (t, rcv) = (t.as_u64().unwrap_or(0), rcv.as_u64().unwrap_or(0));
            lat.push(rcv.saturating_sub(t));
            seen.insert(t);
        }
        misrouted += r["misrouted"].as_u64().unwrap_or(0);
        other += r["other"].as_u64().unwrap_or(0);
        closed += r["closed"].as_u64().unwrap_or(0);
    }
    lat.sort_unstable();
    let losses = out.ok_t.iter().filter(|t| !seen.contains(t)).count();
    let secs = out.t_last_reply.saturating_sub(out.t_first) as f64 / 1e9;
    let us = |q: f64| r3(quantile(&lat, q) as f64 / 1e3);
    let (cpu, sched) = cpu_per(&s0, &s1, out.sent);
    m.insert("conns".into(), json!(o.conns));
    m.insert("rate".into(), json!(o.rate));
    m.insert("pushes".into(), json!(out.sent));
    m.insert("ok".into(), json!(out.ok_t.len()));
    m.insert("fail".into(), json!(out.fail));
    m.insert("bad_answers".into(), json!(out.other));
    m.insert("unanswered".into(), json!(out.unanswered));
    m.insert("deliveries".into(), json!(lat.len()));
    m.insert("duplicates".into(), json!(lat.len() - seen.len()));
    m.insert("misrouted".into(), json!(misrouted));
    m.insert("other_frames".into(), json!(other));
    m.insert("clients_closed".into(), json!(closed));
    m.insert("losses".into(), json!(losses));
    m.insert("pushes_per_s".into(), json!(util::per_s(out.sent, secs)));
    m.insert("elapsed_s".into(), json!(r3(secs)));
    m.insert("latency_p50_us".into(), json!(us(0.5)));
    m.insert("latency_p99_us".into(), json!(us(0.99)));
    m.insert("latency_p999_us".into(), json!(us(0.999)));
    m.insert("latency_max_us".into(), json!(us(1.0)));
    m.insert("server_cpu_us_per_push".into(), json!(cpu));
    m.insert("server_cpu_sched_us_per_push".into(), json!(sched));
    m.insert("steal_pct".into(), json!(procstat::steal_pct(&s0, &s1)));
    m.insert("server_rss".into(), json!(s1.rss));
    Ok(())
}

/// Figures of a finished series of broadcasts, from the clients' reports.
pub(crate) fn broadcast_figures(
    m: &mut Map<String, Value>,
    reports: &[Value],
    sent: &[u64],
    expected_each: u64,
    s0: &Sample,
    s1: &Sample,
) {
    // Per broadcast: deliveries, first and last receive time.
    let mut per: Vec<(u64, u64, u64)> = vec![(0, u64::MAX, 0); sent.len()];
    for r in reports {
        for e in r["bc"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let f = |i: usize| e.get(i).and_then(Value::as_u64).unwrap_or(0);
            let idx = f(0) as usize;
            if let Some(p) = per.get_mut(idx) {
                p.0 += f(1);
                p.1 = p.1.min(f(2));
                p.2 = p.2.max(f(3));
            }
        }
    }
    let deliveries: u64 = per.iter().map(|p| p.0).sum();
    let closed: u64 = reports
        .iter()
        .map(|r| r["closed"].as_u64().unwrap_or(0))
        .sum();
    m.insert("clients_closed".into(), json!(closed));
    let mut completion: Vec<u64> = Vec::new();
    let mut first: Vec<u64> = Vec::new();
    let mut last_recv = 0;
    for (p, &t) in per.iter().zip(sent) {
        if p.0 > 0 {
            completion.push(p.2.saturating_sub(t));
            first.push(p.1.saturating_sub(t));
            last_recv = last_recv.max(p.2);
        }
    }
    completion.sort_unstable();
    first.sort_unstable();
    let t0 = sent.first().copied().unwrap_or(0);
    let secs = last_recv.saturating_sub(t0) as f64 / 1e9;
    let us = |v: &[u64], q: f64| r3(quantile(v, q) as f64 / 1e3);
    let (cpu, sched) = cpu_per(s0, s1, deliveries);
    let expected = expected_each * sent.len() as u64;
    m.insert("broadcasts".into(), json!(sent.len()));
    m.insert("expected".into(), json!(expected));
    m.insert("deliveries".into(), json!(deliveries));
    m.insert("missing".into(), json!(expected.saturating_sub(deliveries)));
    m.insert(
        "deliveries_per_s".into(),
        json!(util::per_s(deliveries, secs)),
    );
    m.insert("elapsed_s".into(), json!(r3(secs)));
    m.insert("completion_p50_us".into(), json!(us(&completion, 0.5)));
    m.insert("completion_p99_us".into(), json!(us(&completion, 0.99)));
    m.insert("completion_max_us".into(), json!(us(&completion, 1.0)));
    m.insert("first_delivery_p50_us".into(), json!(us(&first, 0.5)));
    m.insert("server_cpu_us_per_delivery".into(), json!(cpu));
    m.insert("server_cpu_sched_us_per_delivery".into(), json!(sched));
    m.insert("steal_pct".into(), json!(procstat::steal_pct(s0, s1)));
    m.insert("server_rss".into(), json!(s1.rss));
}

/// `broadcast`: B broadcasts through Herald's text port.
fn broadcast(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let herald = start_herald(o)?;
    let (mut pool, c) = connect_pool(o, d, herald.ws, false, o.clients)?;
    let mut m = base(o, "herald", &c);
    pool.ask("reset")?;
    let s0 = herald.sample();
    util::progress(&format!(
        "{} broadcasts, {} ms apart",
        o.count, o.spacing_ms
    ));
    let (sent, ok) = push::broadcasts(herald.text, o.count, Duration::from_millis(o.spacing_ms))?;
    let got = pool.wait_for(
        "bc",
        c.connected * o.count as u64,
        Duration::from_millis(o.settle_ms),
        d.before_end(5_000_000_000),
    )?;
    let s1 = herald.sample();
    util::progress(&format!("{ok} ok answers, {got} deliveries"));
    let reports = pool.ask("report")?;
    m.insert("count".into(), json!(o.count));
    m.insert("spacing_ms".into(), json!(o.spacing_ms));
    m.insert("ok".into(), json!(ok));
    broadcast_figures(&mut m, &reports, &sent, c.connected, &s0, &s1);
    pool.shutdown();
    drop(herald);
    Ok(Value::Object(m))
}

/// Starts the `limit` server (`--floor-procs` processes) and connects `o.clients` plain
/// clients to it; returns the server, the clients and the outcome of connecting (its
/// `connected` is what the server accepted).
fn limit_pool(o: &Opts, d: Deadlines) -> Result<(Floor, ClientPool, ConnectOutcome), String> {
    floor::check_fit(o.clients, o.floor_procs)?;
    let mut floor = Floor::spawn(FloorKind {
        procs: o.floor_procs,
        ws: false,
        steady: false,
        ping_ms: 0,
    })?;
    let (pool, mut c) = connect_pool(o, d, floor.addr(), true, o.clients)?;
    c.connected = floor.wait_accepted(c.connected, d.connect)?;
    Ok((floor, pool, c))
}

/// `limit`: the same broadcasts done by the trivial one-write-per-delivery server.
fn limit(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let (mut floor, mut pool, c) = limit_pool(o, d)?;
    let accepted = c.connected;
    let mut m = base(o, "limit", &c);
    m.insert("accepted".into(), json!(accepted));
    m.insert("accepted_per_proc".into(), json!(floor.counts()?));
    pool.ask("reset")?;
    let s0 = floor.sample();
    util::progress(&format!(
        "limit: {} broadcasts, {} ms apart",
        o.count, o.spacing_ms
    ));
    let mut sent = Vec::with_capacity(o.count);
    for i in 0..o.count {
        let t = mono_ns();
        floor.broadcast(&push::bc_data(i, t))?;
        sent.push(t);
        if o.spacing_ms > 0 && i + 1 < o.count {
            std::thread::sleep(Duration::from_millis(o.spacing_ms));
        }
    }
    let got = pool.wait_for(
        "bc",
        accepted * o.count as u64,
        Duration::from_millis(o.settle_ms),
        d.before_end(5_000_000_000),
    )?;
    let s1 = floor.sample();
    util::progress(&format!("limit: {got} deliveries"));
    let reports = pool.ask("report")?;
    m.insert("count".into(), json!(o.count));
    m.insert("spacing_ms".into(), json!(o.spacing_ms));
    broadcast_figures(&mut m, &reports, &sent, accepted, &s0, &s1);
    pool.shutdown();
    floor.stop();
    Ok(Value::Object(m))
}
