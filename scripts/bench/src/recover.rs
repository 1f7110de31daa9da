//! `recover`: N WebSocket clients with a history (`history_size`, set to 100 unless `--set`
//! gives it) hold their position (`?envelope=1`), all drop at once, `--missed` messages are
//! pushed to each of them while they are away, and all reconnect at once with `?since=` their
//! last position. Reports how many were recovered (`recovered: true`), the time from the
//! reconnect to the last recovery answer, the missed messages received, and the server's CPU.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::clients::{ClientPool, PoolConfig};
use crate::modes::{base, cpu_per, start_herald_with, Deadlines};
use crate::util::{self, mono_ns, r3};

/// The sum of `key` over the processes' `positions` answers.
fn sum(answers: &[Value], key: &str) -> u64 {
    answers.iter().map(|a| a[key].as_u64().unwrap_or(0)).sum()
}

/// Pushes `missed` seed lines to each of `clients` uids through the text port (pipelined on
/// one connection); the answers (`fail`: nobody is connected, the history keeps them).
fn push_missed(text: std::net::SocketAddrV4, clients: usize, missed: usize) -> Result<u64, String> {
    let s = TcpStream::connect(text).map_err(|e| format!("text port: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut w = s.try_clone().map_err(|e| format!("text port: {e}"))?;
    let total = clients * missed;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let mut buf = Vec::with_capacity(64 * 1024);
        for m in 0..missed {
            for u in 0..clients {
                buf.extend_from_slice(format!("{{\"uid\":\"u{u}\",\"missed\":{m}}}\n").as_bytes());
                if buf.len() > 60 * 1024 {
                    w.write_all(&buf).map_err(|e| format!("text port: {e}"))?;
                    buf.clear();
                }
            }
        }
        w.write_all(&buf).map_err(|e| format!("text port: {e}"))
    });
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut answered = 0;
    for _ in 0..total {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| format!("text port: reading answers: {e}"))?;
        answered += 1;
    }
    writer
        .join()
        .map_err(|_| "text port writer panicked".to_string())??;
    Ok(answered)
}

/// Runs the mode.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let mut sets = o.sets.clone();
    if !sets.iter().any(|s| s.starts_with("history_size=")) {
        sets.push("history_size=100".into());
    }
    let herald = start_herald_with(o, sets)?;
    let mut pool = ClientPool::spawn(&PoolConfig {
        ws: herald.ws,
        clients: o.clients,
        uid_base: 0,
        procs: o.procs.unwrap_or(o.clients.div_ceil(15_000) + 1).max(1),
        per_addr: o.per_addr,
        inflight: o.inflight,
        raw: false,
        ca: None,
        connect_deadline_ns: d.connect,
        total_connects: 2 * o.clients,
    })?;
    pool.ask("history")?;
    util::progress(&format!("connecting {} clients", o.clients));
    let c = pool.connect()?;
    let n = c.connected;
    // Every client knows its position before the drop.
    let deadline = d.before_end(30_000_000_000);
    loop {
        let got = sum(&pool.ask("positions")?, "positioned");
        if got >= n {
            break;
        }
        if mono_ns() > deadline {
            return Err(format!("only {got} of {n} clients got a position"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dropped: u64 = sum(&pool.ask("drop")?, "dropped");
    util::progress(&format!(
        "dropped {dropped} clients; pushing while they are away"
    ));
    // The server notices the closes before the pushes (they then answer `fail`, kept).
    std::thread::sleep(Duration::from_millis(500));
    let missed = o.missed.max(1);
    let pushed = push_missed(herald.text, o.clients, missed)?;
    let s0 = herald.sample();
    let t0 = mono_ns();
    pool.ask("reopen")?;
    util::progress("reconnecting with since");
    let settle = d.before_end(10_000_000_000);
    let answers = loop {
        let a = pool.ask("positions")?;
        if sum(&a, "recovered") + sum(&a, "not_recovered") >= n || mono_ns() > settle {
            break a;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The missed messages follow each answer: wait for them a little.
    let want = n * missed as u64;
    let answers = {
        let until = mono_ns() + 5_000_000_000;
        let mut a = answers;
        while sum(&a, "positioned_msgs") < want && mono_ns() < until {
            std::thread::sleep(Duration::from_millis(20));
            a = pool.ask("positions")?;
        }
        a
    };
    let s1 = herald.sample();
    let last = answers
        .iter()
        .filter_map(|a| a["recovery_last"].as_u64())
        .max()
        .unwrap_or(t0);
    let (cpu_us, sched_us) = cpu_per(&s0, &s1, n.max(1));
    let mut m = base(o, "herald", &c);
    m.insert("dropped".into(), json!(dropped));
    m.insert("pushed_while_away".into(), json!(pushed));
    m.insert("recovered".into(), json!(sum(&answers, "recovered")));
    m.insert(
        "not_recovered".into(),
        json!(sum(&answers, "not_recovered")),
    );
    m.insert(
        "missed_received".into(),
        json!(sum(&answers, "positioned_msgs")),
    );
    m.insert("missed_expected".into(), json!(want));
    m.insert(
        "recovery_last_s".into(),
        json!(r3(last.saturating_sub(t0) as f64 / 1e9)),
    );
    m.insert("server_cpu_us_per_recovery".into(), json!(cpu_us));
    m.insert("server_sched_us_per_recovery".into(), json!(sched_us));
    pool.shutdown();
    Ok(Value::Object(m))
}
