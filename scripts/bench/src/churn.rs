//! The `churn` mode (issue 6, target 5: connects, random disconnects and pushes at once, and
//! whether the server gives its memory back).
//!
//! 1. Start Herald and let it settle; sample its memory: the *baseline* (no client yet).
//! 2. Connect and log in N clients as the other modes do (client processes, source addresses).
//! 3. Send each client process `churn R/P_procs PUSH/P_procs S TEXT …` (see
//!    `clients/churn.rs`): for S seconds every process opens its share of R connections per
//!    second under fresh uids, closes as many random logged-in ones, and pushes its share of the
//!    push rate through its own text connection to its own logged-in clients; each answers with
//!    counts once its churn has drained. A sampler thread reads the server's RSS and PSS every
//!    100 ms from the start of step 2 to the end of step 4: the *peak*.
//! 4. `leave`: every client closes. After 2 s more the memory is sampled: *after*.
//!
//! `memory_return_pct` = (after − baseline) / baseline × 100 on RSS (`pss_return_pct` on PSS).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::args::Opts;
use crate::modes::{self, Deadlines};
use crate::procstat::{self, Sample};
use crate::util::{self, quantile, r3};

/// Reads the server's memory periodically in a thread and keeps the largest values.
struct PeakSampler {
    /// Set to stop the thread.
    stop: Arc<AtomicBool>,
    /// The thread; it returns (peak RSS, peak PSS, samples).
    handle: JoinHandle<(u64, u64, u64)>,
}

impl PeakSampler {
    /// Starts sampling the process tree of `pid` every `every`.
    fn start(pid: i32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut rss, mut pss, mut n) = (0, 0, 0);
            while !flag.load(Ordering::Relaxed) {
                let s = procstat::sample_tree(pid);
                rss = rss.max(s.rss);
                pss = pss.max(s.pss);
                n += 1;
                std::thread::sleep(every);
            }
            (rss, pss, n)
        });
        PeakSampler { stop, handle }
    }

    /// Stops the thread and returns (peak RSS, peak PSS, samples).
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or((0, 0, 0))
    }
}

/// Sum of the numeric field `key` over the processes' answers.
fn sum(answers: &[Value], key: &str) -> u64 {
    answers.iter().map(|a| a[key].as_u64().unwrap_or(0)).sum()
}

/// (after − baseline) / baseline in percent.
fn return_pct(baseline: u64, after: u64) -> f64 {
    if baseline == 0 {
        return 0.0;
    }
    r3((after as f64 - baseline as f64) / baseline as f64 * 100.0)
}

/// Runs the `churn` mode.
pub fn run(o: &Opts, d: Deadlines) -> Result<Value, String> {
    let rate = o.rate.unwrap_or(2000.0);
    let herald = modes::start_herald(o)?;
    std::thread::sleep(Duration::from_millis(500));
    let baseline = herald.sample();
    let sampler = PeakSampler::start(herald.pid(), Duration::from_millis(100));
    let total = o.clients + (rate * o.seconds).ceil() as usize;
    let (mut pool, c) = modes::connect_pool(o, d, herald.ws, false, total)?;
    let mut m = modes::base(o, "herald", &c);
    pool.ask("reset")?;
    let procs = pool.len();
    let s0 = herald.sample();
    util::progress(&format!(
        "churning for {} s: {rate} connects and disconnects/s, {} pushes/s, over {procs} \
         client processes",
        o.seconds, o.push_rate
    ));
    let text = herald.text;
    let share = |x: f64| x / procs as f64;
    let answers = pool.ask_each(|i| {
        format!(
            "churn {} {} {} {text} {} {procs} {}",
            share(rate),
            share(o.push_rate),
            o.seconds,
            o.clients + i,
            o.seed.wrapping_mul(1000).wrapping_add(i as u64 + 1),
        )
    })?;
    let s1 = herald.sample();
    let reports = pool.ask("report")?;
    let left = sum(&pool.ask("leave")?, "left");
    let (rss_peak, pss_peak, samples) = sampler.finish();
    std::thread::sleep(Duration::from_secs(2));
    let after = herald.sample();

    let opened = sum(&answers, "opened");
    let failed = sum(&answers, "failed");
    let disconnects = sum(&answers, "disconnects");
    let losses = sum(&answers, "losses");
    let t0 = answers
        .iter()
        .filter_map(|a| a["t0"].as_u64())
        .min()
        .unwrap_or(0);
    let t_stop = answers
        .iter()
        .filter_map(|a| a["t_stop"].as_u64())
        .max()
        .unwrap_or(0);
    let secs = t_stop.saturating_sub(t0) as f64 / 1e9;
    util::progress(&format!(
        "{opened} connects ({failed} failed), {disconnects} disconnects, {} pushes ok, \
         {losses} lost; {left} clients left",
        sum(&answers, "ok")
    ));
    let mut lat = Vec::new();
    for r in &reports {
        let ts = r["uni_t"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let rs = r["uni_r"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for (t, rcv) in ts.iter().zip(rs) {
            lat.push(
                rcv.as_u64()
                    .unwrap_or(0)
                    .saturating_sub(t.as_u64().unwrap_or(0)),
            );
        }
    }
    lat.sort_unstable();
    let us = |q: f64| r3(quantile(&lat, q) as f64 / 1e3);
    let mut errors: Vec<Value> = answers
        .iter()
        .flat_map(|a| a["errors"].as_array().cloned().unwrap_or_default())
        .collect();
    errors.truncate(5);

    m.insert("rate".into(), json!(rate));
    m.insert("seconds".into(), json!(o.seconds));
    m.insert("push_rate".into(), json!(o.push_rate));
    m.insert("churn_s".into(), json!(r3(secs)));
    m.insert("churn_connects".into(), json!(opened));
    m.insert("churn_connects_failed".into(), json!(failed));
    m.insert(
        "churn_connects_per_s".into(),
        json!(util::per_s(opened, secs)),
    );
    m.insert("churn_logged_in".into(), json!(sum(&answers, "logged_in")));
    m.insert("connects_behind_max".into(), json!(sum(&answers, "behind")));
    m.insert(
        "connects_attempted".into(),
        json!(c.connected + c.failed + opened),
    );
    m.insert("connects_failed".into(), json!(c.failed + failed));
    m.insert("disconnects".into(), json!(disconnects));
    m.insert(
        "disconnects_graceful".into(),
        json!(sum(&answers, "graceful")),
    );
    m.insert(
        "server_closed".into(),
        json!(sum(&answers, "server_closed")),
    );
    m.insert("clients_at_end".into(), json!(left));
    for k in [
        "pushes",
        "no_target",
        "ok",
        "fail",
        "fail_connected",
        "bad_answers",
        "unanswered",
        "counted",
        "undelivered_to_leavers",
    ] {
        let name = match k {
            "ok" | "fail" => format!("pushes_{k}"),
            "counted" => "pushes_counted".into(),
            _ => k.to_string(),
        };
        m.insert(name, json!(sum(&answers, k)));
    }
    m.insert("losses".into(), json!(losses));
    m.insert("deliveries".into(), json!(lat.len()));
    m.insert("misrouted".into(), json!(sum(&reports, "misrouted")));
    m.insert("latency_p50_us".into(), json!(us(0.5)));
    m.insert("latency_p99_us".into(), json!(us(0.99)));
    m.insert("latency_max_us".into(), json!(us(1.0)));
    m.insert(
        "server_cpu_us_per_connect".into(),
        json!(modes::cpu_per(&s0, &s1, opened).1),
    );
    m.insert(
        "steal_pct".into(),
        json!(crate::procstat::steal_pct(&s0, &s1)),
    );
    insert_memory(&mut m, &baseline, (rss_peak, pss_peak, samples), &after);
    m.insert("errors".into(), json!(errors));
    pool.shutdown();
    drop(herald);
    Ok(Value::Object(m))
}

/// The memory figures: baseline, peak, after, and how far "after" is from the baseline.
fn insert_memory(
    m: &mut serde_json::Map<String, Value>,
    baseline: &Sample,
    peak: (u64, u64, u64),
    after: &Sample,
) {
    m.insert("server_procs".into(), json!(after.procs));
    m.insert("rss_baseline".into(), json!(baseline.rss));
    m.insert("rss_peak".into(), json!(peak.0.max(baseline.rss)));
    m.insert("rss_after".into(), json!(after.rss));
    m.insert("pss_baseline".into(), json!(baseline.pss));
    m.insert("pss_peak".into(), json!(peak.1.max(baseline.pss)));
    m.insert("pss_after".into(), json!(after.pss));
    m.insert("anon_baseline".into(), json!(baseline.anon));
    m.insert("anon_after".into(), json!(after.anon));
    m.insert(
        "anon_return_pct".into(),
        json!(return_pct(baseline.anon, after.anon)),
    );
    m.insert("memory_samples".into(), json!(peak.2));
    m.insert(
        "memory_return_pct".into(),
        json!(return_pct(baseline.rss, after.rss)),
    );
    m.insert(
        "pss_return_pct".into(),
        json!(return_pct(baseline.pss, after.pss)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_percentages() {
        assert_eq!(return_pct(1000, 1050), 5.0);
        assert_eq!(return_pct(1000, 900), -10.0);
        assert_eq!(return_pct(0, 900), 0.0);
    }

    #[test]
    fn sums_skip_missing_fields() {
        let a = [json!({"x": 2}), json!({"y": 1}), json!({"x": 3})];
        assert_eq!(sum(&a, "x"), 5);
    }
}
